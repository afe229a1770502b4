//! `Decision` (what a limiter answered) and `Reservation` (an admitted call to reconcile).

use std::collections::HashMap;
use std::sync::Mutex;

use llmthrottle_core::{units_per_api_unit, Decision as CoreDecision};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use smallvec::SmallVec;

use crate::convert;

/// The dimension of concurrency caps: an acquire holds one slot of it, never more.
const CONCURRENCY: &str = "concurrency";
use crate::errors::{guard, to_py, InvalidInput};
use crate::limiter::Limiter;
use crate::state::{dispatch, AnyEngine, AnyReservation};

/// The dimensions a limiter knows, by index. Indexes only ever get appended to, so a
/// `Dimensions` taken before a policy change still reads decisions made after it.
pub struct Dimensions {
    pub names: Vec<String>,
    pub index: HashMap<String, usize>,
    pub requests: Option<usize>,
    pub tokens: Option<usize>,
}

impl Dimensions {
    pub fn new(names: Vec<String>) -> Self {
        let index: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Self {
            requests: index.get("requests").copied(),
            tokens: index.get("tokens").copied(),
            names,
            index,
        }
    }

    /// The index and engine amount of one `name=value` keyword; an unknown name or a bad
    /// value is an error.
    #[inline]
    pub fn named(&self, name: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<(usize, u64)> {
        let name = name.cast::<PyString>()?.to_str()?;
        let Some(&index) = self.index.get(name) else {
            return Err(unknown_dimension(name, self));
        };
        let amount = convert::amount(value, name)?;
        if name == CONCURRENCY && amount != 1 {
            return Err(InvalidInput::new_err(format!(
                "concurrency={amount}: a concurrency cap counts calls in flight, and each admitted call \
                 holds exactly one slot until commit or cancel; leave concurrency= out (or pass 1)"
            )));
        }
        Ok((index, amount))
    }

    /// Calls `each(index, amount)` for every `name=value` of `amounts`, in engine units.
    pub fn for_each_named(&self, amounts: &Bound<'_, PyDict>, mut each: impl FnMut(usize, u64)) -> PyResult<()> {
        for (name, value) in amounts.iter() {
            let (index, amount) = self.named(&name, &value)?;
            each(index, amount);
        }
        Ok(())
    }

    /// Usage by dimension index from `name=value` keywords (`None` where not named).
    pub fn usage(&self, amounts: Option<&Bound<'_, PyDict>>) -> PyResult<SmallVec<[Option<u64>; 8]>> {
        let mut usage: SmallVec<[Option<u64>; 8]> = SmallVec::from_elem(None, self.names.len());
        if let Some(amounts) = amounts {
            self.for_each_named(amounts, |index, amount| usage[index] = Some(amount))?;
        }
        Ok(usage)
    }

    /// A value in the API's units (dollars for `*_usd`) from the engine's integer units.
    pub fn to_python(&self, py: Python<'_>, dimension: usize, value: u64) -> PyResult<Py<PyAny>> {
        let scale = units_per_api_unit(&self.names[dimension]);
        Ok(if scale == 1 {
            value.into_pyobject(py)?.into_any().unbind()
        } else {
            (value as f64 / scale as f64).into_pyobject(py)?.into_any().unbind()
        })
    }
}

/// What a limiter decided. Truthy when the call was admitted.
#[pyclass(module = "llmthrottle", subclass, frozen)]
pub struct Decision {
    /// The engine's answer, as it wrote it.
    pub decision: CoreDecision,
    /// The limiter that decided (its dimensions name this decision's indexes).
    pub limiter: Py<Limiter>,
    /// The `key` argument: a str as given, a list or tuple of str as a tuple (settling
    /// refunds by these keys, so a list changed after the call must not redirect them).
    pub keys: Py<PyAny>,
}

impl Decision {
    fn dimensions(&self) -> &Dimensions {
        self.limiter.get().dimensions.load()
    }
}

#[pymethods]
impl Decision {
    /// True when the call was admitted.
    #[getter]
    fn allowed(&self) -> bool {
        self.decision.allowed
    }

    /// Seconds after which the same request would be admitted, if nothing else arrived
    /// (0.0 when admitted, and when a concurrency cap denied it: that frees up on a release).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.decision.retry_after_ns as f64 / 1e9
    }

    /// Seconds to wait before using an admission made with `max_wait` (0.0 otherwise).
    #[getter]
    fn delay(&self) -> f64 {
        self.decision.delay_ns as f64 / 1e9
    }

    /// Seconds until every limit the request touched is back to full.
    #[getter]
    fn reset_after(&self) -> f64 {
        self.decision.reset_after_ns as f64 / 1e9
    }

    /// The dimension of the limit that denied the call, or None.
    #[getter]
    fn limited_by(&self) -> Option<String> {
        self.decision
            .limited_by
            .map(|by| self.dimensions().names[by.dimension].clone())
    }

    /// The key whose limit denied the call, or None.
    #[getter]
    fn limited_key<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(by) = self.decision.limited_by else {
            return Ok(None);
        };
        let keys = self.keys.bind(py);
        if keys.is_instance_of::<PyString>() {
            return Ok(Some(keys.clone()));
        }
        Ok(Some(keys.get_item(by.key)?))
    }

    /// What is left in each dimension the call was charged in (the least over its keys).
    #[getter]
    fn remaining<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let dimensions = self.dimensions();
        for &(dimension, value) in &self.decision.remaining {
            out.set_item(
                &dimensions.names[dimension],
                dimensions.to_python(py, dimension, value)?,
            )?;
        }
        Ok(out)
    }

    fn __bool__(&self) -> bool {
        self.decision.allowed
    }

    /// Shows the cycle collector the limiter and the keys, so that a cycle through a decision
    /// (a limiter whose attribute holds one of its decisions) is collected.
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.limiter)?;
        visit.call(&self.keys)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let class = if self.decision.allowed { "admitted" } else { "denied" };
        let mut text = format!("<Decision {class}");
        if let Some(dimension) = self.limited_by() {
            text += &format!(
                " limited_by={dimension:?} key={} retry_after={:.6}",
                self.limited_key(py)?
                    .map(|k| k.repr().map(|r| r.to_string()))
                    .transpose()?
                    .unwrap_or_default(),
                self.retry_after()
            );
        }
        if self.decision.delay_ns > 0 {
            text += &format!(" delay={:.6}", self.delay());
        }
        Ok(text + ">")
    }
}

/// An admitted call. `commit(**usage)` reconciles the reservation with real usage (refunds or
/// charges the difference), `cancel()` refunds it all; either releases concurrency slots.
/// As a context manager it cancels when the block raises and commits as reserved otherwise.
/// A reservation dropped unsettled keeps its charges and releases its concurrency slots.
#[pyclass(module = "llmthrottle", extends = Decision, frozen)]
pub struct Reservation {
    pub inner: Mutex<AnyReservation>,
}

// The engine that settles a reservation is its limiter's.

impl Reservation {
    /// Runs `action` with the limiter's engine, this reservation and the keys it was made for.
    fn settle(
        slf: &Bound<'_, Self>,
        action: impl FnOnce(&AnyEngine, &mut AnyReservation, &[&str]) -> llmthrottle_core::Result<()>,
    ) -> PyResult<()> {
        let decision = slf.as_super().get();
        let keys = convert::keys(decision.keys.bind(slf.py()))?;
        let keys = convert::key_strs(&keys)?;
        let engine = &decision.limiter.get().engine;
        guard(|| {
            let mut inner = slf.get().inner.lock().unwrap_or_else(|e| e.into_inner());
            action(engine, &mut inner, &keys).map_err(to_py)
        })
    }
}

#[pymethods]
impl Reservation {
    /// Reconciles with real usage, e.g. `commit(tokens=913)`: less than reserved is refunded,
    /// more is charged (even past the limit: it was used). Unnamed dimensions keep what was
    /// reserved. Raises if the reservation was already committed or cancelled. Usage that
    /// finds no room in a full shared table raises `StateError` once everything else is
    /// charged; the reservation is settled all the same.
    #[pyo3(signature = (**usage))]
    fn commit(slf: &Bound<'_, Self>, usage: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let actual = slf.as_super().get().dimensions().usage(usage)?;
        Self::settle(
            slf,
            |engine, inner, keys| dispatch!(engine, inner, (e, r) => e.commit(r, keys, &actual)),
        )
    }

    /// The call never happened: refunds everything and releases concurrency slots.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::settle(
            slf,
            |engine, inner, keys| dispatch!(engine, inner, (e, r) => e.cancel(r, keys)),
        )
    }

    /// True once committed or cancelled.
    #[getter]
    fn settled(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        dispatch!(&*inner, AnyReservation, r => r.is_settled())
    }

    /// The amount reserved in each dimension (the largest over keys).
    #[getter]
    fn reserved<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let dimensions = slf.as_super().get().dimensions();
        let inner = slf.get().inner.lock().unwrap_or_else(|e| e.into_inner());
        let out = PyDict::new(py);
        for (index, name) in dimensions.names.iter().enumerate() {
            let amount = dispatch!(&*inner, AnyReservation, r => r.reserved(index));
            if amount > 0 {
                out.set_item(name, dimensions.to_python(py, index, amount)?)?;
            }
        }
        Ok(out)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Cancels when the block raised, commits as reserved otherwise (unless already settled).
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if slf.get().settled() {
            return Ok(false);
        }
        if exc_type.is_none() {
            Self::commit(slf, None)?;
        } else {
            Self::cancel(slf)?;
        }
        Ok(false)
    }
}

pub fn unknown_dimension(name: &str, dimensions: &Dimensions) -> PyErr {
    crate::errors::InvalidInput::new_err(format!(
        "unknown dimension '{name}': this limiter limits {}",
        dimensions
            .names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
