//! State stores and clocks as Python objects, and the engine enum that dispatches over stores.

use std::sync::Arc;

use llmthrottle_core::{Clock, Engine, FakeClock as CoreFakeClock, LocalStore, Now, Reservation};
use pyo3::prelude::*;

/// An engine over any store: one arm per store, one dispatch macro for all of them.
pub enum AnyEngine {
    Local(Arc<Engine<LocalStore>>),
}

/// A reservation; its limiter's engine (of the same store) settles it.
pub enum AnyReservation {
    Local(Reservation<LocalStore>),
}

/// Evaluates an expression on whichever store a value is built on:
/// `dispatch!(engine, AnyEngine, e => ...)`, `dispatch!(reservation, AnyReservation, r => ...)`,
/// or `dispatch!(engine, reservation, (e, r) => ...)` for a reservation with its engine.
macro_rules! dispatch {
    ($value:expr, AnyEngine, $inner:ident => $body:expr) => {
        match $value {
            AnyEngine::Local($inner) => $body,
        }
    };
    ($value:expr, AnyReservation, $inner:ident => $body:expr) => {
        match $value {
            AnyReservation::Local($inner) => $body,
        }
    };
    ($engine:expr, $reservation:expr, ($e:ident, $r:ident) => $body:expr) => {
        match ($engine, $reservation) {
            (AnyEngine::Local($e), AnyReservation::Local($r)) => $body,
            #[allow(unreachable_patterns)]
            _ => unreachable!("a reservation is settled by the engine that made it"),
        }
    };
}
pub(crate) use dispatch;

/// Limiter state kept in this process's memory (the default): fast, but every process has
/// its own. Share one instance between limiters to let them share state.
#[pyclass(module = "llmthrottle", name = "InProcessState", frozen)]
pub struct InProcessState {
    pub store: Arc<LocalStore>,
}

#[pymethods]
impl InProcessState {
    #[new]
    fn new() -> Self {
        Self {
            store: Arc::new(LocalStore::new()),
        }
    }

    /// Number of live (key, limit) cells.
    fn __len__(&self) -> usize {
        self.store.len()
    }

    fn __repr__(&self) -> String {
        format!("InProcessState(cells={})", self.store.len())
    }
}

/// A clock that moves only when told to, for deterministic tests of code that uses limiters.
#[pyclass(module = "llmthrottle.testing", name = "FakeClock", frozen)]
pub struct FakeClock {
    pub clock: Arc<CoreFakeClock>,
}

#[pymethods]
impl FakeClock {
    /// Starts at monotonic time `start` seconds and wall time `wall` (Unix seconds, UTC).
    #[new]
    #[pyo3(signature = (start=1.0, wall=1_767_225_600.0))]
    fn new(start: f64, wall: f64) -> PyResult<Self> {
        Ok(Self {
            clock: Arc::new(CoreFakeClock::new(
                crate::convert::seconds_to_ns(start, "start")?,
                crate::convert::seconds_to_ns(wall, "wall")?,
            )),
        })
    }

    /// Moves both clocks forward by `seconds`.
    fn advance(&self, seconds: f64) -> PyResult<()> {
        self.clock
            .advance(crate::convert::seconds_to_ns(seconds, "seconds")?);
        Ok(())
    }

    /// Current monotonic reading in seconds.
    #[getter]
    fn monotonic(&self) -> f64 {
        self.clock.now().monotonic_ns as f64 / 1e9
    }

    /// Current wall-clock reading in Unix seconds.
    #[getter]
    fn wall(&self) -> f64 {
        self.clock.now().wall_ns as f64 / 1e9
    }

    fn __repr__(&self) -> String {
        let Now {
            monotonic_ns,
            wall_ns,
        } = self.clock.now();
        format!(
            "FakeClock(monotonic={}, wall={})",
            monotonic_ns as f64 / 1e9,
            wall_ns as f64 / 1e9
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<InProcessState>()?;
    m.add_class::<FakeClock>()?;
    Ok(())
}
