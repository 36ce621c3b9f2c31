//! The wire contract: every NATS subject, message type, stream, KV bucket and header Ferry uses.
//!
//! Invariant: no other crate spells a subject, stream or bucket name inline; they all come from here,
//! so a change of contract is a change of this crate.

pub mod bundle;
pub mod keys;
pub mod messages;
pub mod permissions;
pub mod plan;
pub mod seal;
pub mod standby;
pub mod subjects;
pub mod topology;

pub use messages::*;

/// A failover epoch: the revision of the lease write that made a node active. It only grows.
pub type Epoch = u64;

/// NATS header carrying the epoch of the node that produced a work message.
pub const HEADER_EPOCH: &str = "Ferry-Epoch";

/// NATS headers carrying a run's trace context (W3C Trace Context), on every message of a run
/// when traces are on: `RunRequested`, `WorkBatch`, `BatchResult`, `RunFinished`
/// (`ferry_service::trace` writes and reads them).
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_TRACESTATE: &str = "tracestate";

/// Serialize a wire message. Serialization of these plain data types cannot fail.
pub fn encode<T: serde::Serialize>(message: &T) -> bytes::Bytes {
    serde_json::to_vec(message)
        .expect("wire messages are plain data and always serialize")
        .into()
}

/// Deserialize a wire message, naming the type on failure.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("decode {type_name}: {source}")]
pub struct DecodeError {
    type_name: &'static str,
    source: serde_json::Error,
}
