//! The llmthrottle engine: GCRA rate limits, concurrency caps and calendar quotas over
//! lock-free state stores.
//!
//! The math (`gcra`, `quota`) is pure functions of (state, now, request). A [`Store`] holds
//! the state, one `AtomicU64` per (limit, key), and is updated only by compare-and-swap.
//! The [`Engine`] applies a [`PolicySpec`] to requests over several keys and dimensions,
//! all or nothing, and hands back a [`Reservation`] to reconcile with real usage.

pub mod announced;
pub mod calendar;
pub mod clock;
pub mod engine;
pub mod error;
pub mod gcra;
pub mod limit;
pub mod local;
pub mod policy;
pub mod quota;
pub mod rate;
pub mod reply;
pub mod reservation;
pub mod shm;
pub mod store;
pub mod versioned;

pub use calendar::Period;
pub use clock::{Clock, FakeClock, Now, SystemClock};
pub use engine::{Decision, Engine, LimitStatus, LimitedBy, PlannedStep};
pub use error::{CoreError, Result};
pub use gcra::RateParams;
pub use limit::{CellKind, LimitKind, MAX_KEY_BYTES, TOMBSTONE};
pub use local::LocalStore;
pub use policy::{units_per_api_unit, LimitSpec, PolicySpec, RuleSpec, CONCURRENCY, MAX_LAYERS};
pub use quota::QuotaParams;
pub use rate::Rate;
pub use reservation::Reservation;
pub use shm::{FileMode, SharedOptions, SharedStore};
pub use store::{Hold, Store, Update};
