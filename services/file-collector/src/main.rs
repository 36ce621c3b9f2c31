//! `ferry-file-collector`: thin process wrapper; the service lives in `lib.rs::run`.

fn main() -> std::process::ExitCode {
    ferry_service::main_scaffold::run_service(ferry_file_collector::SERVICE, ferry_file_collector::run)
}
