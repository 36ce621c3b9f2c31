//! What every Ferry service shares: settings, the NATS connection and topology, the
//! `/metrics` + `/healthz` endpoint, NATS micro-service registration, epoch fencing, and the
//! `main` scaffolding (signals, ordered shutdown).
//!
//! Invariant: a service's `main.rs` only calls [`main_scaffold::run_service`]; everything that
//! differs between services lives in that service's `lib.rs::run(settings, shutdown)`.

pub mod api;
pub mod audit_seal;
pub mod bundle;
pub mod epoch;
pub mod http;
pub mod lease;
pub mod ledger;
pub mod main_scaffold;
pub mod nats;
pub mod settings;
pub mod standby;
pub mod streams;
pub mod trace;

pub use epoch::{EpochGate, LeaseView, Stamp};
pub use lease::NodeLease;
pub use settings::Settings;

/// The version every service reports in its NATS micro-service registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
