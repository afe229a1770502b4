//! Python face of what llmthrottle reads of a provider's replies (`llmthrottle_core::announced`,
//! `llmthrottle_core::reply`): the limits its headers announce, and where a whole reply's
//! `usage` is.

use llmthrottle_core::announced::{self, HeaderFamily, LimitHeaders};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::errors::{InvalidInput, InvalidType};

type Found = (&'static str, u64, u64, Option<f64>, f64);

fn family(provider: &str) -> PyResult<HeaderFamily> {
    HeaderFamily::from_name(provider).ok_or_else(|| {
        InvalidInput::new_err(format!(
            "provider must be 'openai', 'azure' or 'anthropic', not {provider:?}"
        ))
    })
}

/// (dimension, limit, remaining, reset in seconds or None, window in seconds) for each limit
/// `headers` announce: a list of `(name, value)` bytes pairs, as httpx's `Headers.raw` and
/// aiohttp's `raw_headers` give them. `now_unix_s` reads Anthropic's reset instants.
#[pyfunction]
fn announced_limits(headers: &Bound<'_, PyAny>, provider: &str, now_unix_s: f64) -> PyResult<Vec<Found>> {
    let family = family(provider)?;
    let pairs: Vec<Bound<'_, PyAny>> = match headers.cast::<PyList>() {
        Ok(list) => list.iter().collect(),
        Err(_) => headers.try_iter()?.collect::<PyResult<_>>()?,
    };
    let not_pair = || InvalidType::new_err("headers must be (name, value) pairs of bytes");
    let mut named: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)> = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let pair = pair.cast::<PyTuple>().map_err(|_| not_pair())?;
        if pair.len() != 2 {
            return Err(not_pair());
        }
        let name = pair.get_item(0)?.cast_into::<PyBytes>().map_err(|_| not_pair())?;
        let value = pair.get_item(1)?.cast_into::<PyBytes>().map_err(|_| not_pair())?;
        named.push((name, value));
    }
    let mut seen = LimitHeaders::default();
    for (name, value) in &named {
        seen.see(family, name.as_bytes(), value.as_bytes());
    }
    Ok(seen
        .announced(family, now_unix_s)
        .into_iter()
        .map(|a| (a.dimension, a.limit, a.remaining, a.reset_s, a.window_s))
        .collect())
}

/// An `x-ratelimit-reset-*` value in seconds (`6m0s`, `1.5s`, `20ms`, Azure's `45`); None if
/// malformed.
#[pyfunction]
fn parse_reset_duration(text: &str) -> Option<f64> {
    announced::parse_reset_duration(text.as_bytes())
}

/// An RFC 3339 instant as a POSIX timestamp (UTC when no offset is given); None if malformed.
#[pyfunction]
fn parse_rfc3339(text: &str) -> Option<f64> {
    announced::parse_rfc3339(text.as_bytes())
}

/// The byte range of the root object's `usage` object in a whole JSON reply, or None when it
/// cannot be proved without parsing the reply (see `llmthrottle_core::reply`).
#[pyfunction]
fn root_usage_span(body: &[u8]) -> Option<(usize, usize)> {
    llmthrottle_core::reply::root_usage_span(body)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(announced_limits, m)?)?;
    m.add_function(wrap_pyfunction!(parse_reset_duration, m)?)?;
    m.add_function(wrap_pyfunction!(parse_rfc3339, m)?)?;
    m.add_function(wrap_pyfunction!(root_usage_span, m)?)?;
    Ok(())
}
