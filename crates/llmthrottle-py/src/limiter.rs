//! The native `Limiter`: `try_acquire`, `peek`, `status` and policy replacement.
//! Blocking and async waiting are built on `try_acquire(max_wait=...)` in Python.

use std::sync::Arc;

use llmthrottle_core::versioned::Versioned;
use llmthrottle_core::{gcra, Clock, Decision as CoreDecision, Engine, LimitKind, Period, SystemClock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use smallvec::SmallVec;

use crate::convert;
use crate::decision::{Decision, Dimensions, Reservation};
use crate::errors::{guard, to_py};
#[cfg(feature = "layout-tricks")]
use crate::in_place::{self, Fresh};
use crate::state::{dispatch, AnyEngine, AnyReservation, FakeClock, InProcessState, SharedState};

#[pyclass(module = "llmthrottle._native", name = "Limiter", subclass, frozen)]
pub struct Limiter {
    pub(crate) engine: AnyEngine,
    pub(crate) dimensions: Versioned<Dimensions>,
}

pub(crate) type Amounts = SmallVec<[u64; 8]>;

impl Limiter {
    /// Request amounts by dimension index, written into `amounts` (which the caller keeps, as
    /// returning it would copy it); `requests` defaults to 1. `named` yields the other
    /// `name=value` keywords.
    #[inline]
    pub(crate) fn amounts<'py>(
        dimensions: &Dimensions,
        requests: Option<&Bound<'py, PyAny>>,
        tokens: Option<&Bound<'py, PyAny>>,
        named: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        amounts: &mut Amounts,
    ) -> PyResult<()> {
        let len = dimensions.names.len();
        *amounts = match len {
            0..=8 => Amounts::from_buf_and_len([0; 8], len),
            _ => Amounts::from_elem(0, len),
        };
        match (requests, dimensions.requests) {
            (Some(value), Some(index)) => amounts[index] = convert::amount(value, "requests")?,
            (Some(value), None) => {
                convert::amount(value, "requests")?;
            }
            (None, Some(index)) => amounts[index] = 1,
            (None, None) => {}
        }
        match (tokens, dimensions.tokens) {
            (Some(value), Some(index)) => amounts[index] = convert::amount(value, "tokens")?,
            (Some(value), None) => {
                convert::amount(value, "tokens")?;
            }
            _ => {}
        }
        for (name, value) in named {
            let (index, amount) = dimensions.named(&name, &value)?;
            amounts[index] = amount;
        }
        Ok(())
    }

    /// `try_acquire` once its arguments are parsed: called by the entry point in `fastcall.rs`
    /// (or the plain method without `layout-tricks`), which also keeps panics out of Python.
    #[inline]
    pub(crate) fn decide(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        amounts: &[u64],
        max_wait_ns: u64,
    ) -> PyResult<Py<PyAny>> {
        let this = slf.get();
        if let Ok(single) = key.cast::<PyString>() {
            this.decide_keys(slf, &[single.to_str()?], amounts, max_wait_ns, key)
        } else {
            let owned = convert::keys(key)?;
            let strs = convert::key_strs(&owned)?;
            // A tuple cannot change; a list is copied into one, so settling refunds the keys
            // charged even if the caller changes the list afterwards.
            let frozen = match key.cast::<PyTuple>() {
                Ok(tuple) => tuple.clone(),
                Err(_) => PyTuple::new(slf.py(), &owned)?,
            };
            this.decide_keys(slf, &strs, amounts, max_wait_ns, frozen.as_any())
        }
    }

    /// Asks the engine, which writes its answer straight into the object returned when it can
    /// (see `in_place`).
    #[inline(always)]
    fn decide_keys(
        &self,
        slf: &Bound<'_, Self>,
        keys: &[&str],
        amounts: &[u64],
        max_wait_ns: u64,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        match &self.engine {
            AnyEngine::Local(e) => Self::answer(
                slf,
                key,
                || AnyReservation::Local(Default::default()),
                |d, r| {
                    let AnyReservation::Local(r) = r else {
                        unreachable!("made empty just above")
                    };
                    e.acquire_into(keys, amounts, max_wait_ns, d, r)
                },
            ),
            AnyEngine::Shared(e) => Self::answer(
                slf,
                key,
                || AnyReservation::Shared(Default::default()),
                |d, r| {
                    let AnyReservation::Shared(r) = r else {
                        unreachable!("made empty just above")
                    };
                    e.acquire_into(keys, amounts, max_wait_ns, d, r)
                },
            ),
        }
    }

    /// Runs `decide` on an empty decision and reservation (`empty`, of the engine's store) and
    /// returns the `Reservation` when it admits, a plain `Decision` when it denies.
    #[cfg(feature = "layout-tricks")]
    #[inline(always)]
    fn answer(
        slf: &Bound<'_, Self>,
        keys: &Bound<'_, PyAny>,
        empty: impl Fn() -> AnyReservation + Copy,
        decide: impl FnOnce(&mut CoreDecision, &mut AnyReservation) -> llmthrottle_core::Result<bool>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut fresh = match Fresh::new(slf, keys, empty)? {
            Some(fresh) => fresh,
            None => return Self::answer_moved(slf, keys, empty, decide),
        };
        let (decision, reservation) = fresh.parts();
        if decide(&mut decision.decision, reservation).map_err(to_py)? {
            return Ok(fresh.into_object());
        }
        let denied = std::mem::take(&mut decision.decision);
        Ok(Bound::new(py, Self::decision(slf, denied, keys))?.into_any().unbind())
    }

    /// Without the layout tricks, every result is built by PyO3.
    #[cfg(not(feature = "layout-tricks"))]
    #[inline(always)]
    fn answer(
        slf: &Bound<'_, Self>,
        keys: &Bound<'_, PyAny>,
        empty: impl Fn() -> AnyReservation + Copy,
        decide: impl FnOnce(&mut CoreDecision, &mut AnyReservation) -> llmthrottle_core::Result<bool>,
    ) -> PyResult<Py<PyAny>> {
        Self::answer_moved(slf, keys, empty, decide)
    }

    /// `answer` building the result on the stack and moving it into the object, until the
    /// layout for building in place is known (or where it cannot be used).
    #[cfg_attr(feature = "layout-tricks", cold)]
    fn answer_moved(
        slf: &Bound<'_, Self>,
        keys: &Bound<'_, PyAny>,
        empty: impl Fn() -> AnyReservation + Copy,
        decide: impl FnOnce(&mut CoreDecision, &mut AnyReservation) -> llmthrottle_core::Result<bool>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut decision = CoreDecision::default();
        let mut reservation = empty();
        if !decide(&mut decision, &mut reservation).map_err(to_py)? {
            return Ok(Bound::new(py, Self::decision(slf, decision, keys))?.into_any().unbind());
        }
        let init = PyClassInitializer::from(Self::decision(slf, decision, keys)).add_subclass(Reservation {
            inner: std::sync::Mutex::new(reservation),
        });
        let object = Bound::new(py, init)?;
        #[cfg(feature = "layout-tricks")]
        in_place::learn(&object);
        Ok(object.into_any().unbind())
    }

    /// The Python `Decision` for the engine's `decision` on `keys`, decided by `slf`.
    fn decision(slf: &Bound<'_, Self>, decision: CoreDecision, keys: &Bound<'_, PyAny>) -> Decision {
        Decision {
            decision,
            limiter: slf.clone().unbind(),
            keys: keys.clone().unbind(),
        }
    }
}

#[pymethods]
impl Limiter {
    /// Low-level constructor; use `llmthrottle.Limiter`, which accepts the documented config.
    #[new]
    #[pyo3(signature = (rules, *, namespace="default", state=None, clock=None, share=1.0))]
    fn new(
        rules: &Bound<'_, PyAny>,
        namespace: &str,
        state: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, FakeClock>>,
        share: f64,
    ) -> PyResult<Self> {
        let spec = convert::policy_spec(namespace, rules, share)?;
        let clock: Arc<dyn Clock> = match clock {
            Some(fake) => fake.get().clock.clone(),
            None => Arc::new(SystemClock),
        };
        let engine = match state {
            None => AnyEngine::Local(Arc::new(
                Engine::new(Arc::new(Default::default()), clock, &spec).map_err(to_py)?,
            )),
            Some(state) => {
                if let Ok(local) = state.cast::<InProcessState>() {
                    AnyEngine::Local(Arc::new(
                        Engine::new(local.get().store.clone(), clock, &spec).map_err(to_py)?,
                    ))
                } else if let Ok(shared) = state.cast::<SharedState>() {
                    AnyEngine::Shared(Arc::new(
                        Engine::new(shared.get().store.clone(), clock, &spec).map_err(to_py)?,
                    ))
                } else {
                    return Err(crate::errors::InvalidType::new_err(format!(
                        "state must be InProcessState or SharedState, not {}",
                        state.get_type().name()?
                    )));
                }
            }
        };
        let names = dispatch!(&engine, AnyEngine, e => e.policy().dimensions.clone());
        Ok(Self {
            engine,
            dimensions: Versioned::new(Dimensions::new(names)),
        })
    }

    /// Charges usage that already happened to every limit of `key` (a str or a list of str),
    /// without asking admission and even past the limits, e.g. `charge("team:a", tokens=900)`:
    /// for calls made without the limiter, or spend replayed from a ledger. Takes no
    /// concurrency slot; `requests` is not counted unless given.
    #[pyo3(signature = (key, /, **amounts))]
    fn charge(&self, key: &Bound<'_, PyAny>, amounts: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let actual = self.dimensions.load().usage(amounts)?;
        let owned = convert::keys(key)?;
        let strs = convert::key_strs(&owned)?;
        guard(|| dispatch!(&self.engine, AnyEngine, e => e.charge_usage(&strs, &actual)).map_err(to_py))
    }

    /// Decides at once, never blocking. Returns a `Reservation` (a truthy `Decision`) when
    /// admitted, a falsy `Decision` when not. `key` is a str or a list of str (all-or-nothing
    /// over every key). Amounts: `requests` (default 1), `tokens`, and any other dimension by
    /// name. With `max_wait` > 0, a request that fits within that many seconds is admitted
    /// now, behind earlier ones, and its `delay` says how long to wait before the call.
    //
    // The portable entry point, for builds without `layout-tricks`; with them, `fastcall.rs`
    // installs its own in this method's place (keep the two docstrings alike). `max_wait`
    // comes through `**amounts` so that an explicit `max_wait=None` is refused as there.
    #[cfg(not(feature = "layout-tricks"))]
    #[pyo3(
        signature = (key, /, requests=None, tokens=None, **amounts),
        text_signature = "($self, key, /, requests=None, tokens=None, *, max_wait=0.0, **amounts)"
    )]
    fn try_acquire(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        requests: Option<&Bound<'_, PyAny>>,
        tokens: Option<&Bound<'_, PyAny>>,
        amounts: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        guard(|| {
            let mut max_wait_ns = 0;
            let mut named: SmallVec<[(Bound<'_, PyAny>, Bound<'_, PyAny>); 4]> = SmallVec::new();
            for (name, value) in amounts.into_iter().flat_map(|d| d.iter()) {
                if name
                    .cast::<PyString>()
                    .is_ok_and(|s| s.to_str().is_ok_and(|s| s == "max_wait"))
                {
                    max_wait_ns = convert::seconds_to_ns(value.extract::<f64>()?, "max_wait")?;
                } else {
                    named.push((name, value));
                }
            }
            let mut amounts = Amounts::new();
            Self::amounts(
                slf.get().dimensions.load(),
                requests,
                tokens,
                named.into_iter(),
                &mut amounts,
            )?;
            Self::decide(slf, key, &amounts, max_wait_ns)
        })
    }

    /// What `try_acquire` would decide now, without charging anything.
    #[pyo3(signature = (key, /, requests=None, tokens=None, **amounts))]
    fn peek(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        requests: Option<&Bound<'_, PyAny>>,
        tokens: Option<&Bound<'_, PyAny>>,
        amounts: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let this = slf.get();
        let dimensions = this.dimensions.load();
        let named = amounts.into_iter().flat_map(|d| d.iter());
        let mut amounts = Amounts::new();
        Self::amounts(dimensions, requests, tokens, named, &mut amounts)?;
        let owned = convert::keys(key)?;
        let strs = convert::key_strs(&owned)?;
        let decision = guard(|| dispatch!(&this.engine, AnyEngine, e => e.peek(&strs, &amounts)).map_err(to_py))?;
        Ok(Bound::new(slf.py(), Self::decision(slf, decision, key))?
            .into_any()
            .unbind())
    }

    /// The state of `key` under each limit that applies to it: a list of
    /// `(dimension, kind, remaining, used, reset_after_seconds, capacity)` tuples.
    fn status<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let statuses = guard(|| dispatch!(&self.engine, AnyEngine, e => e.status(key)).map_err(to_py))?;
        let dimensions = self.dimensions.load();
        statuses
            .into_iter()
            .map(|s| {
                let index = dimensions.index[&s.dimension];
                let kind = match s.kind {
                    LimitKind::Rate(_) => "rate",
                    LimitKind::Concurrency { .. } => "concurrency",
                    LimitKind::Quota(_) => "quota",
                };
                PyTuple::new(
                    py,
                    [
                        s.dimension.clone().into_pyobject(py)?.into_any(),
                        kind.into_pyobject(py)?.into_any(),
                        dimensions.to_python(py, index, s.remaining)?.into_bound(py),
                        dimensions.to_python(py, index, s.used)?.into_bound(py),
                        (s.reset_after_ns as f64 / 1e9).into_pyobject(py)?.into_any(),
                        dimensions.to_python(py, index, s.kind.capacity())?.into_bound(py),
                    ],
                )
            })
            .collect()
    }

    /// Replaces the limits (same rule tuples as the constructor); state carries over for
    /// every limit whose rule pattern, dimension and kind are unchanged.
    fn _set_rules(&self, rules: &Bound<'_, PyAny>, namespace: &str) -> PyResult<()> {
        let spec = convert::policy_spec(namespace, rules, 1.0)?;
        guard(|| {
            dispatch!(&self.engine, AnyEngine, e => {
                e.set_policy(&spec).map_err(to_py)?;
                self.dimensions.store(Dimensions::new(e.policy().dimensions.clone()));
                Ok(())
            })
        })
    }

    /// The steps `try_acquire` would charge, checked as it checks them (ExceedsCapacity, bad
    /// keys or amounts), for a state that decides outside this process (Redis): a list of
    /// `(key_index, label, layer, dimension, units_per_api_unit, kind, a, b, c, amount)` where
    /// kind is `"rate"` (a, b, c = emission_ns, tolerance_ns, burst; `"whole_rate"` when its
    /// refunds come back whole), `"concurrency"` (a = max)
    /// or `"quota"` (a = limit, b = period: 0 day, 1 week, 2 month, 3 every c nanoseconds).
    #[pyo3(signature = (key, /, requests=None, tokens=None, **amounts))]
    fn _plan<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        requests: Option<&Bound<'py, PyAny>>,
        tokens: Option<&Bound<'py, PyAny>>,
        amounts: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let dimensions = self.dimensions.load();
        let named = amounts.into_iter().flat_map(|d| d.iter());
        let mut amounts = Amounts::new();
        Self::amounts(dimensions, requests, tokens, named, &mut amounts)?;
        let owned = convert::keys(key)?;
        let strs = convert::key_strs(&owned)?;
        let steps = guard(|| dispatch!(&self.engine, AnyEngine, e => e.plan(&strs, &amounts)).map_err(to_py))?;
        planned_tuples(py, dimensions, &steps)
    }

    /// The steps `charge(key, **usage)` would force, in the form of `_plan`.
    #[pyo3(signature = (key, /, **amounts))]
    fn _plan_usage<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        amounts: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let dimensions = self.dimensions.load();
        let actual = dimensions.usage(amounts)?;
        let owned = convert::keys(key)?;
        let strs = convert::key_strs(&owned)?;
        let steps = guard(|| dispatch!(&self.engine, AnyEngine, e => e.plan_usage(&strs, &actual)).map_err(to_py))?;
        planned_tuples(py, dimensions, &steps)
    }

    /// Every limit that applies to `key`, in the form of `_plan` (amounts 0).
    fn _plan_status<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let dimensions = self.dimensions.load();
        let steps = guard(|| dispatch!(&self.engine, AnyEngine, e => e.plan_limits(key)).map_err(to_py))?;
        planned_tuples(py, dimensions, &steps)
    }

    /// Usage as `commit(**usage)` reads it, in the engine's integer units by dimension name.
    #[pyo3(signature = (**amounts))]
    fn _usage(&self, amounts: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, u64)>> {
        let dimensions = self.dimensions.load();
        let usage = dimensions.usage(amounts)?;
        Ok(usage
            .iter()
            .enumerate()
            .filter_map(|(index, used)| used.map(|u| (dimensions.names[index].clone(), u)))
            .collect())
    }

    /// Every dimension some limit constrains.
    #[getter]
    fn dimensions(&self) -> Vec<String> {
        self.dimensions.load().names.clone()
    }
}

fn planned_tuples<'py>(
    py: Python<'py>,
    dimensions: &Dimensions,
    steps: &[llmthrottle_core::PlannedStep],
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    steps
        .iter()
        .map(|step| {
            let name = &dimensions.names[step.dimension];
            let (kind, a, b, c) = match step.kind {
                LimitKind::Rate(p) if p.whole_refunds => ("whole_rate", p.emission_ns, p.tolerance_ns, p.burst),
                LimitKind::Rate(p) => ("rate", p.emission_ns, p.tolerance_ns, p.burst),
                LimitKind::Concurrency { max } => ("concurrency", max, 0, 0),
                LimitKind::Quota(q) => match q.period {
                    Period::Day => ("quota", q.limit, 0, 0),
                    Period::Week => ("quota", q.limit, 1, 0),
                    Period::Month => ("quota", q.limit, 2, 0),
                    Period::Fixed(ns) => ("quota", q.limit, 3, ns),
                },
            };
            (
                step.key_index,
                step.label.as_str(),
                step.layer,
                name.as_str(),
                llmthrottle_core::units_per_api_unit(name),
                kind,
                a,
                b,
                c,
                step.amount,
            )
                .into_pyobject(py)
        })
        .collect()
}

/// True when `key` matches the rule pattern `pattern` (`*` matches any run of characters):
/// the same matching the engine applies.
#[pyfunction]
fn key_matches(pattern: &str, key: &str) -> bool {
    llmthrottle_core::policy::glob_match(pattern, key)
}

/// Seconds in a duration such as `"30d"`, `"12h"`, `"1.5h"` or `"500ms"`, as rates and
/// periods read them.
#[pyfunction]
fn parse_duration(text: &str) -> PyResult<f64> {
    llmthrottle_core::rate::parse_duration_ns(text)
        .map(|ns| ns as f64 / 1e9)
        .map_err(|why| crate::errors::ConfigError::new_err(format!("malformed duration {text:?}: {why}")))
}

/// The period grammar every limit, budget and report shares: `("day" | "week" | "month", 0.0)`
/// for a calendar period, `("duration", seconds)` for any other; an unknown period is a
/// `ConfigError` naming the accepted forms.
#[pyfunction]
fn parse_period(text: &str) -> PyResult<(&'static str, f64)> {
    Ok(match Period::parse(text).map_err(to_py)? {
        Period::Day => ("day", 0.0),
        Period::Week => ("week", 0.0),
        Period::Month => ("month", 0.0),
        Period::Fixed(ns) => ("duration", ns as f64 / 1e9),
    })
}

/// Unix seconds at which the period `text` containing `wall_s` began: the calendar boundary
/// (UTC) of a day, week or month, or for a duration the start of its fixed window from the
/// epoch, as quotas count them.
#[pyfunction]
fn period_start(text: &str, wall_s: f64) -> PyResult<f64> {
    let period = Period::parse(text).map_err(to_py)?;
    let wall_ns = convert::seconds_to_ns(wall_s, "wall_s")?;
    Ok(period.start_ns(period.index(wall_ns)) as f64 / 1e9)
}

/// What a rolling window of `limit` units per `window` still holds at `now_s` after the
/// charges `events` (`(unix seconds, units)`, in time order): the engine's own drain, replayed.
#[pyfunction]
fn rolling_undrained(limit: u64, window: &str, events: Vec<(f64, u64)>, now_s: f64) -> PyResult<u64> {
    let window_ns = llmthrottle_core::rate::parse_duration_ns(window)
        .map_err(|why| crate::errors::ConfigError::new_err(format!("malformed duration {window:?}: {why}")))?;
    let rate = llmthrottle_core::Rate {
        amount: limit as f64,
        period_ns: window_ns,
    };
    let params = llmthrottle_core::RateParams::new(rate, Some(limit.max(1))).map_err(to_py)?;
    let mut tat = 0u64;
    for (at_s, units) in events {
        tat = gcra::force(tat, convert::seconds_to_ns(at_s, "an event time")?, units, &params);
    }
    Ok(gcra::undrained(tat, convert::seconds_to_ns(now_s, "now_s")?, &params))
}

/// `value` of `dimension` in the engine's units, as a limit charges it: micro-dollars for a
/// `*_usd` dimension (from a number or an exact decimal string), the amount itself otherwise.
#[pyfunction]
fn engine_units(dimension: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    convert::amount(value, dimension)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(key_matches, m)?)?;
    m.add_function(wrap_pyfunction!(engine_units, m)?)?;
    m.add_function(wrap_pyfunction!(parse_duration, m)?)?;
    m.add_function(wrap_pyfunction!(parse_period, m)?)?;
    m.add_function(wrap_pyfunction!(period_start, m)?)?;
    m.add_function(wrap_pyfunction!(rolling_undrained, m)?)?;
    m.add_class::<Limiter>()?;
    #[cfg(feature = "layout-tricks")]
    crate::fastcall::install(&m.py().get_type::<Limiter>())?;
    #[cfg(not(feature = "layout-tricks"))]
    m.add_function(wrap_pyfunction!(_results_built_in_place, m)?)?;
    m.add_class::<Decision>()?;
    m.add_class::<Reservation>()?;
    Ok(())
}

/// Without `layout-tricks` no result is ever built in place (see `in_place.rs` for the other
/// answers).
#[cfg(not(feature = "layout-tricks"))]
#[pyfunction]
fn _results_built_in_place() -> Option<bool> {
    Some(false)
}
