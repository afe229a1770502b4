//! The Python exception hierarchy, created here and mapped from `llmthrottle_core::CoreError`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

create_exception!(
    llmthrottle,
    LlmthrottleError,
    PyException,
    "Base class of every error raised by llmthrottle."
);
create_exception!(
    llmthrottle,
    RateLimited,
    LlmthrottleError,
    "A limit denied the call; retry after `retry_after` seconds (`limited_by` names the limit)."
);
create_exception!(
    llmthrottle,
    ExceedsCapacity,
    PyValueError,
    "The request can never be admitted: it asks for more than a limit's burst allows."
);
create_exception!(
    llmthrottle,
    BudgetExceeded,
    LlmthrottleError,
    "A spending budget has no room for the call's worst-case cost."
);
create_exception!(
    llmthrottle,
    ConfigError,
    PyValueError,
    "A limit, rate string, budget or policy file is malformed."
);
create_exception!(
    llmthrottle,
    StateError,
    LlmthrottleError,
    "The limiter state store cannot be used (full table, foreign or incompatible file, I/O error)."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LlmthrottleError", py.get_type::<LlmthrottleError>())?;
    m.add("RateLimited", py.get_type::<RateLimited>())?;
    m.add("ExceedsCapacity", py.get_type::<ExceedsCapacity>())?;
    m.add("BudgetExceeded", py.get_type::<BudgetExceeded>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    // ExceedsCapacity and ConfigError are ValueErrors for callers that validate input, and
    // llmthrottle errors for callers that catch everything the library raises.
    Ok(())
}
