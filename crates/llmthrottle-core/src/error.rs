//! The one error type of the core; the binding maps each variant to a Python exception.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A limit, rate string or policy is malformed.
    Config(String),
    /// An amount or key is out of range (negative, too large, empty).
    InvalidInput(String),
    /// The request can never be admitted: it asks for more than the limit's capacity.
    ExceedsCapacity {
        key: String,
        dimension: String,
        requested: u64,
        capacity: u64,
    },
    /// The state store cannot be used (full, incompatible, I/O).
    State(String),
    /// commit/cancel on a reservation that was already settled.
    AlreadySettled,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Config(message) | CoreError::InvalidInput(message) => f.write_str(message),
            CoreError::ExceedsCapacity {
                key,
                dimension,
                requested,
                capacity,
            } => write!(
                f,
                "{dimension}={requested} for key {key:?} can never be admitted: the limit allows at most {capacity} at once"
            ),
            CoreError::State(message) => f.write_str(message),
            CoreError::AlreadySettled => {
                f.write_str("this reservation was already committed or cancelled")
            }
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
