//! `ferry-cert-handler`: thin process wrapper; the service lives in `lib.rs::run`.

fn main() -> std::process::ExitCode {
    ferry_service::main_scaffold::run_service(ferry_cert_handler::SERVICE, ferry_cert_handler::run)
}
