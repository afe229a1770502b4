//! State stores and clocks as Python objects, and the engine enum that dispatches over stores.

use std::sync::Arc;

use std::path::PathBuf;

use llmthrottle_core::{
    CellKind, Clock, Engine, FakeClock as CoreFakeClock, FileMode, LocalStore, Now, Reservation, SharedOptions,
    SharedStore,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// An engine over any store: one arm per store, one dispatch macro for all of them.
pub enum AnyEngine {
    Local(Arc<Engine<LocalStore>>),
    Shared(Arc<Engine<SharedStore>>),
}

/// A reservation; its limiter's engine (of the same store) settles it.
pub enum AnyReservation {
    Local(Reservation<LocalStore>),
    Shared(Reservation<SharedStore>),
}

/// Evaluates an expression on whichever store a value is built on:
/// `dispatch!(engine, AnyEngine, e => ...)`, `dispatch!(reservation, AnyReservation, r => ...)`,
/// or `dispatch!(engine, reservation, (e, r) => ...)` for a reservation with its engine.
macro_rules! dispatch {
    ($value:expr, AnyEngine, $inner:ident => $body:expr) => {
        match $value {
            AnyEngine::Local($inner) => $body,
            AnyEngine::Shared($inner) => $body,
        }
    };
    ($value:expr, AnyReservation, $inner:ident => $body:expr) => {
        match $value {
            AnyReservation::Local($inner) => $body,
            AnyReservation::Shared($inner) => $body,
        }
    };
    ($engine:expr, $reservation:expr, ($e:ident, $r:ident) => $body:expr) => {
        match ($engine, $reservation) {
            (AnyEngine::Local($e), AnyReservation::Local($r)) => $body,
            (AnyEngine::Shared($e), AnyReservation::Shared($r)) => $body,
            _ => unreachable!("a reservation is settled by the engine that made it"),
        }
    };
}
pub(crate) use dispatch;

/// Limiter state kept in this process's memory (the default): fast, but every process has
/// its own. Share one instance between limiters to let them share state. Weakly referenceable:
/// what the Python layer keeps beside a state (the provider pauses recorded on it) lives as
/// long as the state.
#[pyclass(module = "llmthrottle", name = "InProcessState", frozen, weakref)]
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
        self.clock.advance(crate::convert::seconds_to_ns(seconds, "seconds")?);
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

    /// Current wall-clock reading in Unix nanoseconds (exact, for stores that keep their own
    /// time, such as Redis).
    #[getter]
    fn wall_ns(&self) -> u64 {
        self.clock.now().wall_ns
    }

    fn __repr__(&self) -> String {
        let Now { monotonic_ns, wall_ns } = self.clock.now();
        format!(
            "FakeClock(monotonic={}, wall={})",
            monotonic_ns as f64 / 1e9,
            wall_ns as f64 / 1e9
        )
    }
}

/// Limiter state in shared memory: every process on the host that opens the same `name`
/// shares the same counters, exactly, with no server. The first process creates the table
/// (`capacity` keys, default 65,536; file mode 0600, or 0660 with `group_access=True`); the
/// others attach to it whatever their `capacity`. `lease_capacity` (default 16,384) bounds the
/// concurrency slots held at once over all processes. `path` puts the table file elsewhere than
/// `/dev/shm/llmthrottle-<name>`. Works across `fork()` and with `spawn`.
#[pyclass(module = "llmthrottle", name = "SharedState", frozen)]
pub struct SharedState {
    pub store: Arc<SharedStore>,
}

fn kind_name(kind: CellKind) -> String {
    kind.tag()
}

#[pymethods]
impl SharedState {
    #[new]
    #[pyo3(signature = (name, *, capacity=None, path=None, group_access=false, long_key_capacity=None, lease_capacity=None))]
    fn new(
        name: &str,
        capacity: Option<usize>,
        path: Option<PathBuf>,
        group_access: bool,
        long_key_capacity: Option<usize>,
        lease_capacity: Option<usize>,
    ) -> PyResult<Self> {
        let defaults = SharedOptions::default();
        let options = SharedOptions {
            capacity: capacity.unwrap_or(defaults.capacity),
            long_key_capacity,
            path,
            mode: if group_access { FileMode::Group } else { FileMode::Owner },
            lease_capacity: lease_capacity.unwrap_or(defaults.lease_capacity),
            ..defaults
        };
        let store = crate::errors::guard(|| SharedStore::open_with(name, &options).map_err(crate::errors::to_py))?;
        Ok(Self { store: Arc::new(store) })
    }

    /// Attaches to an existing table without ever creating one (StateError if there is none).
    #[staticmethod]
    #[pyo3(signature = (name, *, path=None))]
    fn attach(name: &str, path: Option<PathBuf>) -> PyResult<Self> {
        let store = crate::errors::guard(|| SharedStore::attach(name, path).map_err(crate::errors::to_py))?;
        Ok(Self { store: Arc::new(store) })
    }

    /// Deletes the table file; returns whether there was one. Processes that still have it
    /// open keep using the old table until they reopen: stop them first.
    #[staticmethod]
    #[pyo3(signature = (name, *, path=None))]
    fn remove(name: &str, path: Option<PathBuf>) -> PyResult<bool> {
        crate::errors::guard(|| SharedStore::remove(name, path).map_err(crate::errors::to_py))
    }

    /// Pickles as "attach to the same table", so a SharedState (and the work that carries it)
    /// can be handed to a multiprocessing worker.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (String, PathBuf))> {
        let attach = py.import("llmthrottle._native")?.getattr("_attach_shared_state")?;
        Ok((attach, (self.store.name().to_owned(), self.store.path().to_path_buf())))
    }

    /// The table file's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }

    #[getter]
    fn name(&self) -> String {
        self.store.name().to_owned()
    }

    /// True if this process created the table (rather than attaching to it).
    #[getter]
    fn created(&self) -> bool {
        self.store.created()
    }

    /// Sizes and use of the table.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.store.stats();
        let out = PyDict::new(py);
        out.set_item("path", s.path)?;
        out.set_item("capacity", s.capacity)?;
        out.set_item("long_key_capacity", s.long_key_capacity)?;
        out.set_item("short_slots", s.short_slots)?;
        out.set_item("long_slots", s.long_slots)?;
        out.set_item("live", s.live.0 + s.live.1)?;
        out.set_item("scopes", s.scopes)?;
        out.set_item("lease_capacity", s.lease_capacity)?;
        out.set_item("file_bytes", s.file_bytes)?;
        Ok(out)
    }

    /// Every live entry as `(label, kind, key, value, handles)`; `label` is the limit's
    /// identity (namespace, layer, rule pattern, `kind:dimension#n`, separated by `\x1f`).
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for e in self.store.entries() {
            list.append((e.scope, kind_name(e.kind), e.key, e.value, e.pins))?;
        }
        Ok(list)
    }

    /// Concurrency units held, as `(pid, alive, phase, label, key)`.
    fn leases<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for l in self.store.leases() {
            list.append((l.pid, l.alive, l.phase, l.scope, l.key))?;
        }
        Ok(list)
    }

    /// Gives back the concurrency units of processes that died; returns how many.
    fn reap(&self) -> u64 {
        self.store.reap()
    }

    fn __repr__(&self) -> String {
        format!("SharedState({:?}, path={:?})", self.store.name(), self.store.path())
    }
}

/// Unpickles a SharedState: attaches to the table it named.
#[pyfunction]
fn _attach_shared_state(name: &str, path: PathBuf) -> PyResult<SharedState> {
    SharedState::attach(name, Some(path))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_attach_shared_state, m)?)?;
    m.add_class::<SharedState>()?;
    m.add_class::<InProcessState>()?;
    m.add_class::<FakeClock>()?;
    Ok(())
}
