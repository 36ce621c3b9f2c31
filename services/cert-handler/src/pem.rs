//! PEM text of DER values (RFC 7468: base64 in 64-character lines).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub fn encode(label: &str, der: &[u8]) -> String {
    let text = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}
