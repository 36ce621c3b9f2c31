//! `ferry-scheduler`: thin process wrapper; the service lives in `lib.rs::run`.

fn main() -> std::process::ExitCode {
    ferry_service::main_scaffold::run_service(ferry_scheduler::SERVICE, ferry_scheduler::run)
}
