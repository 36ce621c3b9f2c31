#!/usr/bin/env bash
# After `make test`: no secret the test suite hands to Ferry may appear in what any test printed.
#   check-no-secrets.sh JUNIT_XML SECRETS_FILE
# JUNIT_XML is nextest's report (it keeps the output of passing tests too: .config/nextest.toml);
# SECRETS_FILE lists the secrets, one per line (# comments).
set -euo pipefail
report=$1; secrets=$2
[ -f "$report" ] || { echo "check-no-secrets: $report is missing (did nextest write its JUnit report?)" >&2; exit 1; }
found=0
while IFS= read -r secret; do
  case "$secret" in ''|'#'*) continue ;; esac
  if grep -F -q -- "$secret" "$report"; then
    echo "check-no-secrets: the secret '${secret:0:3}…' appears in the test output ($report):" >&2
    grep -F -n -- "$secret" "$report" | head -3 | cut -c1-300 | sed "s/$secret/<SECRET>/g" >&2
    found=1
  fi
done < "$secrets"
[ "$found" -eq 0 ] && echo "check-no-secrets: none of $(grep -cv '^\(#\|$\)' "$secrets") secrets appears in $(du -h "$report" | cut -f1) of test output"
exit "$found"
