//! Python face of what llmthrottle reads of a provider's replies (`llmthrottle_core::announced`,
//! `llmthrottle_core::reply`): the limits its headers announce, and where a whole reply's
//! `usage` is.

use llmthrottle_core::announced::{self, Announced, HeaderFamily, LimitHeaders};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

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

/// `headers` as (name, value) bytes pairs: a list (or any iterable) of 2-tuples of bytes, or of
/// the (name as sent, lower-case name, value) triples httpx's `Headers` keeps (read without
/// building its `raw` list: every wrapped call reads its request's and its reply's headers).
fn byte_pairs<'py>(headers: &Bound<'py, PyAny>) -> PyResult<Vec<BytePair<'py>>> {
    let not_pair = || InvalidType::new_err("headers must be (name, value) pairs of bytes");
    let pair_of = |pair: Bound<'py, PyAny>| -> PyResult<BytePair<'py>> {
        let pair = pair.cast_into::<PyTuple>().map_err(|_| not_pair())?;
        let (name_at, value_at) = match pair.len() {
            2 => (0, 1),
            3 => (1, 2),
            _ => return Err(not_pair()),
        };
        let name = pair.get_item(name_at)?.cast_into::<PyBytes>().map_err(|_| not_pair())?;
        let value = pair
            .get_item(value_at)?
            .cast_into::<PyBytes>()
            .map_err(|_| not_pair())?;
        Ok((name, value))
    };
    match headers.cast::<PyList>() {
        Ok(list) => list.iter().map(pair_of).collect(),
        Err(_) => headers.try_iter()?.map(|pair| pair_of(pair?)).collect(),
    }
}

/// (dimension, limit, remaining, reset in seconds or None, window in seconds) for each limit
/// `headers` announce (header bytes as `byte_pairs` takes them). `now_unix_s` reads Anthropic's
/// reset instants.
#[pyfunction]
fn announced_limits(headers: &Bound<'_, PyAny>, provider: &str, now_unix_s: f64) -> PyResult<Vec<Found>> {
    Ok(announced_in(headers, provider, now_unix_s)?
        .into_iter()
        .map(as_found)
        .collect())
}

fn announced_in(headers: &Bound<'_, PyAny>, provider: &str, now_unix_s: f64) -> PyResult<Vec<Announced>> {
    let family = family(provider)?;
    let named = byte_pairs(headers)?;
    let mut seen = LimitHeaders::default();
    for (name, value) in &named {
        seen.see(family, name.as_bytes(), value.as_bytes());
    }
    Ok(seen.announced(family, now_unix_s))
}

fn as_found(a: Announced) -> Found {
    (a.dimension, a.limit, a.remaining, a.reset_s, a.window_s)
}

/// `announced_limits`, or None when `headers` announce just the `known` limits
/// (`(dimension, limit, window_s)` of each limit above 0, in the order `announced_limits` gives
/// them) with none of them used up: most replies of a provider key say nothing new, and a
/// wrapped call reads every reply.
#[pyfunction]
fn announced_news(
    headers: &Bound<'_, PyAny>,
    provider: &str,
    now_unix_s: f64,
    known: &Bound<'_, PyTuple>,
) -> PyResult<Option<Vec<Found>>> {
    let found = announced_in(headers, provider, now_unix_s)?;
    if !found.is_empty() && !found.iter().any(|a| a.remaining == 0) && same_limits(&found, known) {
        return Ok(None);
    }
    Ok(Some(found.into_iter().map(as_found).collect()))
}

/// Whether the limits above 0 in `found` are `known`'s `(dimension, limit, window_s)`, in order.
fn same_limits(found: &[Announced], known: &Bound<'_, PyTuple>) -> bool {
    let mut limits = found.iter().filter(|a| a.limit > 0);
    for entry in known.iter() {
        let Some(a) = limits.next() else {
            return false;
        };
        let Ok((dimension, limit, window_s)) = entry.extract::<(Bound<'_, PyString>, u64, f64)>() else {
            return false;
        };
        #[allow(clippy::float_cmp)] // the same parse of the same text: equal, not close
        let same = dimension.to_str().is_ok_and(|d| d == a.dimension) && limit == a.limit && window_s == a.window_s;
        if !same {
            return false;
        }
    }
    limits.next().is_none()
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
    m.add_function(wrap_pyfunction!(announced_news, m)?)?;
    m.add_function(wrap_pyfunction!(parse_reset_duration, m)?)?;
    m.add_function(wrap_pyfunction!(parse_rfc3339, m)?)?;
    m.add_function(wrap_pyfunction!(root_usage_span, m)?)?;
    Ok(())
}
