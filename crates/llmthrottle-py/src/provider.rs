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

type BytePair<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>);

/// `headers` as (name, value) bytes pairs: a list (or any iterable) of 2-tuples of bytes.
fn byte_pairs<'py>(headers: &Bound<'py, PyAny>) -> PyResult<Vec<BytePair<'py>>> {
    let not_pair = || InvalidType::new_err("headers must be (name, value) pairs of bytes");
    let pair_of = |pair: Bound<'py, PyAny>| -> PyResult<BytePair<'py>> {
        let pair = pair.cast_into::<PyTuple>().map_err(|_| not_pair())?;
        if pair.len() != 2 {
            return Err(not_pair());
        }
        let name = pair.get_item(0)?.cast_into::<PyBytes>().map_err(|_| not_pair())?;
        let value = pair.get_item(1)?.cast_into::<PyBytes>().map_err(|_| not_pair())?;
        Ok((name, value))
    };
    match headers.cast::<PyList>() {
        Ok(list) => list.iter().map(pair_of).collect(),
        Err(_) => headers.try_iter()?.map(|pair| pair_of(pair?)).collect(),
    }
}

/// The value of the first of `names` (lower-case bytes, in order of preference) that `headers`
/// carry with a value that is not empty; names are matched in any case, and the first header
/// of a name counts. None when there is none.
#[pyfunction]
fn preferred_header<'py>(
    headers: &Bound<'py, PyAny>,
    names: &Bound<'py, PyTuple>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let wanted: Vec<Bound<'py, PyBytes>> = names
        .iter()
        .map(|name| name.cast_into::<PyBytes>())
        .collect::<Result<_, _>>()
        .map_err(|_| InvalidType::new_err("names must be bytes"))?;
    let mut found: Vec<Option<Bound<'py, PyBytes>>> = vec![None; wanted.len()];
    for (name, value) in byte_pairs(headers)? {
        let name = name.as_bytes();
        if let Some(slot) = wanted.iter().position(|w| name.eq_ignore_ascii_case(w.as_bytes())) {
            if found[slot].is_none() {
                found[slot] = Some(value);
            }
        }
    }
    Ok(found.into_iter().flatten().find(|value| !value.as_bytes().is_empty()))
}

/// (dimension, limit, remaining, reset in seconds or None, window in seconds) for each limit
/// `headers` announce: a list of `(name, value)` bytes pairs, as httpx's `Headers.raw` and
/// aiohttp's `raw_headers` give them. `now_unix_s` reads Anthropic's reset instants.
#[pyfunction]
fn announced_limits(headers: &Bound<'_, PyAny>, provider: &str, now_unix_s: f64) -> PyResult<Vec<Found>> {
    let family = family(provider)?;
    let named = byte_pairs(headers)?;
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
    m.add_function(wrap_pyfunction!(preferred_header, m)?)?;
    Ok(())
}
