//! Python values to core types: amounts, keys, seconds and limit specs, with clear errors.

use llmthrottle_core::{
    units_per_api_unit, LimitKind, LimitSpec, Period, PolicySpec, QuotaParams, Rate, RateParams, RuleSpec,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyString, PyTuple};
use smallvec::SmallVec;

use crate::errors::{to_py, ConfigError, InvalidInput, InvalidType};

/// Largest amount accepted in one call (keeps every product with an interval inside u64).
pub const MAX_AMOUNT: u64 = 1 << 53;

/// An amount in `dimension`: a non-negative int, or for `*_usd` dimensions a number of dollars
/// (converted to micro-dollars exactly when it is a whole number of them, else rounded up so
/// that a cost is never under-counted).
#[inline]
pub fn amount(value: &Bound<'_, PyAny>, dimension: &str) -> PyResult<u64> {
    let scale = units_per_api_unit(dimension);
    // The common case without a detour through 128-bit conversion: an exact int that fits;
    // anything else (and every error) takes the general path below.
    // SAFETY: `value` is a live object (the `Bound` holds a reference) and the GIL is held;
    // the check reads only its type.
    if unsafe { pyo3::ffi::PyLong_CheckExact(value.as_ptr()) } != 0 {
        let mut overflow = 0;
        // SAFETY: `value` is an exact int (checked just above), the GIL is held, and
        // `overflow` is a live local the call writes.
        let n = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(value.as_ptr(), &mut overflow) };
        if overflow == 0 && n >= 0 {
            if let Some(scaled) = (n as u64).checked_mul(scale).filter(|s| *s <= MAX_AMOUNT) {
                return Ok(scaled);
            }
        }
    }
    amount_slow(value, dimension, scale)
}

/// `x` API units (dollars) in engine units (micro-dollars), rounded up, except that a product
/// within a few ulps of an integer is that integer: `m / 1e6` for any whole number of
/// micro-dollars `m` (what a price in micro-dollars becomes as dollars) comes back as exactly
/// `m`, where rounding the float product up would charge 123 µ$ as 124.
fn micro_units(x: f64, scale: u64) -> f64 {
    let product = x * scale as f64;
    let nearest = product.round();
    if (product - nearest).abs() <= product * 4.0 * f64::EPSILON {
        nearest
    } else {
        product.ceil()
    }
}

/// An exact decimal string of API units (`"0.000123"` dollars) in engine units, with no float
/// on the way: how a cost in integer micro-dollars reaches a budget exactly. Digits below the
/// engine's unit round up, as a cost is never under-counted.
fn exact_units(text: &str, dimension: &str, scale: u64) -> PyResult<u64> {
    let bad = || {
        InvalidInput::new_err(format!(
            "{dimension}={text:?} is not a decimal number of dollars such as \"0.000123\""
        ))
    };
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let too_large = || InvalidInput::new_err(format!("{dimension}={text} is too large"));
    let mut units: u64 = 0;
    for digit in whole.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u64::from(digit - b'0')))
            .filter(|u| *u <= MAX_AMOUNT)
            .ok_or_else(too_large)?;
    }
    units = units
        .checked_mul(scale)
        .filter(|u| *u <= MAX_AMOUNT)
        .ok_or_else(too_large)?;
    let mut place = scale;
    for digit in fraction.bytes() {
        let digit = u64::from(digit - b'0');
        if place > 1 {
            place /= 10;
            units += digit * place;
        } else if digit > 0 {
            units += 1; // below the engine's unit: round up, once
            break;
        }
    }
    if units > MAX_AMOUNT {
        return Err(too_large());
    }
    Ok(units)
}

#[cold]
fn amount_slow(value: &Bound<'_, PyAny>, dimension: &str, scale: u64) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() {
        return Err(InvalidType::new_err(format!("{dimension} must be a number, not bool")));
    }
    if let Ok(int) = value.cast::<PyInt>() {
        let n: i128 = int
            .extract()
            .map_err(|_| InvalidInput::new_err(format!("{dimension} is too large")))?;
        if n < 0 {
            return Err(InvalidInput::new_err(format!(
                "{dimension} must not be negative (got {n})"
            )));
        }
        let scaled = (n as u128).saturating_mul(scale as u128);
        if scaled > MAX_AMOUNT as u128 {
            return Err(InvalidInput::new_err(format!(
                "{dimension}={n} is too large (at most {})",
                MAX_AMOUNT / scale
            )));
        }
        return Ok(scaled as u64);
    }
    if scale > 1 {
        if let Ok(text) = value.cast::<PyString>() {
            return exact_units(text.to_str()?, dimension, scale);
        }
        if let Ok(float) = value.cast::<PyFloat>() {
            let x = float.value();
            if !x.is_finite() || x < 0.0 {
                return Err(InvalidInput::new_err(format!(
                    "{dimension} must be a finite, non-negative number of dollars (got {x})"
                )));
            }
            let scaled = micro_units(x, scale);
            if scaled > MAX_AMOUNT as f64 {
                return Err(InvalidInput::new_err(format!("{dimension}={x} is too large")));
            }
            return Ok(scaled as u64);
        }
    }
    let kind = if scale > 1 {
        "a number of dollars or an exact decimal string such as \"0.000123\""
    } else {
        "an int"
    };
    Err(InvalidType::new_err(format!(
        "{dimension} must be {kind}, not {}",
        value.get_type().name()?
    )))
}

/// Seconds as a non-negative float (or int) to nanoseconds; `inf` saturates.
pub fn seconds_to_ns(seconds: f64, what: &str) -> PyResult<u64> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(InvalidInput::new_err(format!(
            "{what} must be a non-negative number of seconds (got {seconds})"
        )));
    }
    Ok((seconds * 1e9).min(u64::MAX as f64) as u64)
}

/// The request's keys: one str, or a list/tuple of str.
pub fn keys<'py>(value: &'py Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyString>>> {
    if let Ok(key) = value.cast::<PyString>() {
        return Ok(vec![key.clone()]);
    }
    let items: Vec<Bound<'py, PyAny>> = if let Ok(list) = value.cast::<PyList>() {
        list.iter().collect()
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        tuple.iter().collect()
    } else {
        return Err(InvalidType::new_err(format!(
            "key must be a str or a list/tuple of str, not {}",
            value.get_type().name()?
        )));
    };
    items
        .into_iter()
        .map(|item| {
            item.cast_into::<PyString>().map_err(|e| {
                InvalidType::new_err(format!(
                    "every key must be a str, not {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })
        })
        .collect()
}

/// The keys as `&str` (UTF-8 views of the Python strings).
pub fn key_strs<'a>(keys: &'a [Bound<'_, PyString>]) -> PyResult<SmallVec<[&'a str; 4]>> {
    keys.iter().map(|k| k.to_str()).collect()
}

/// Builds the core policy from the canonical tuples made by `llmthrottle.policy`:
/// `[(pattern, [(dimension, "rate", rate_str, burst|None[, "whole"]) | (dimension, "concurrency",
///   max, None) | (dimension, "quota", limit, period_str)], layer)]` (`layer` optional, default
///   0; a rate's fifth field, "whole", makes its refunds come back whole).
/// `share` (0 < share <= 1) scales every limit down to one host's part of a fleet's limits
/// (rates, bursts, caps and quotas; each at least 1).
pub fn policy_spec(namespace: &str, rules: &Bound<'_, PyAny>, share: f64) -> PyResult<PolicySpec> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(ConfigError::new_err(format!("share must be in (0, 1], not {share}")));
    }
    let mut spec = PolicySpec {
        namespace: namespace.to_owned(),
        rules: Vec::new(),
    };
    type Limits<'py> = Vec<Bound<'py, PyTuple>>;
    for rule in rules.try_iter()? {
        let rule = rule?;
        let shape = || ConfigError::new_err("each rule must be (pattern, [(dimension, kind, a, b), ...], layer)");
        let (pattern, limits, layer): (String, Limits<'_>, u8) = match rule.len().map_err(|_| shape())? {
            2 => {
                let (pattern, limits): (String, Limits<'_>) = rule.extract().map_err(|_| shape())?;
                (pattern, limits, 0)
            }
            _ => rule.extract().map_err(|_| shape())?,
        };
        let mut rule_spec = RuleSpec {
            pattern: pattern.clone(),
            limits: Vec::new(),
            layer,
        };
        for limit in limits {
            let fields = limit.len();
            if !(4..=5).contains(&fields) {
                return Err(shape());
            }
            let (dimension, kind): (String, String) = (limit.get_item(0)?.extract()?, limit.get_item(1)?.extract()?);
            let (a, b) = (limit.get_item(2)?, limit.get_item(3)?);
            let refund = if fields == 5 { Some(limit.get_item(4)?) } else { None };
            let context = |e: PyErr| {
                Python::attach(|py| {
                    ConfigError::new_err(format!("limit {dimension:?} of {pattern:?}: {}", e.value(py)))
                })
            };
            let kind = limit_kind(&dimension, &kind, &a, &b, refund.as_ref(), share).map_err(context)?;
            rule_spec.limits.push(LimitSpec { dimension, kind });
        }
        spec.rules.push(rule_spec);
    }
    Ok(spec)
}

fn limit_kind(
    dimension: &str,
    kind: &str,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    refund: Option<&Bound<'_, PyAny>>,
    share: f64,
) -> PyResult<LimitKind> {
    let scale = units_per_api_unit(dimension) as f64;
    let part = |n: u64| {
        if share == 1.0 {
            n
        } else {
            ((n as f64 * share).floor() as u64).max(1)
        }
    };
    match kind {
        "rate" => {
            let text: String = a.extract()?;
            let mut rate = Rate::parse(&text).map_err(to_py)?;
            rate.amount *= scale * share;
            let burst = if b.is_none() {
                None
            } else {
                Some(part(amount(b, dimension)?))
            };
            let params = RateParams::new(rate, burst).map_err(to_py)?;
            match refund.map(|r| r.extract::<String>()).transpose()?.as_deref() {
                None | Some("undrained") => Ok(LimitKind::Rate(params)),
                Some("whole") => Ok(LimitKind::Rate(params.with_whole_refunds())),
                Some(other) => Err(InvalidInput::new_err(format!(
                    "refund must be \"undrained\" or \"whole\", not {other:?}"
                ))),
            }
        }
        _ if refund.is_some() => Err(InvalidInput::new_err(format!(
            "only a rate has a refund rule, not a {kind}"
        ))),
        "concurrency" => {
            let max = part(amount(a, dimension)?);
            Ok(LimitKind::Concurrency { max })
        }
        "quota" => {
            let limit = amount(a, dimension)?;
            if limit == 0 || limit > llmthrottle_core::quota::MAX_QUOTA {
                return Err(InvalidInput::new_err(format!(
                    "quota must be between 1 and {}",
                    llmthrottle_core::quota::MAX_QUOTA as f64 / scale
                )));
            }
            let period: String = b.extract()?;
            let period = Period::parse_quota(&period).map_err(to_py)?;
            Ok(LimitKind::Quota(QuotaParams {
                limit: part(limit),
                period,
            }))
        }
        other => Err(InvalidInput::new_err(format!(
            "unknown limit kind {other:?} (rate, concurrency or quota)"
        ))),
    }
}
