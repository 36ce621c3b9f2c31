//! `ferry-failover-coordinator`: thin process wrapper; the service lives in `lib.rs::run`.

fn main() -> std::process::ExitCode {
    ferry_service::main_scaffold::run_service(
        ferry_failover_coordinator::SERVICE,
        ferry_failover_coordinator::run,
    )
}
