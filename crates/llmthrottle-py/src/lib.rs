//! `llmthrottle._native`: the only door from Python into the Rust engine.
//!
//! This crate converts types, maps errors and keeps panics out of Python; every rule lives in
//! `llmthrottle-core` or `llmthrottle-tokens`.

use pyo3::prelude::*;

mod convert;
mod decision;
mod errors;
#[cfg(feature = "layout-tricks")]
mod fastcall;
#[cfg(feature = "layout-tricks")]
mod in_place;
mod limiter;
mod provider;
mod state;
mod tokens;

#[cfg(test)]
mod tests;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    state::register(m)?;
    limiter::register(m)?;
    #[cfg(feature = "layout-tricks")]
    in_place::register(m)?;
    tokens::register(m)?;
    provider::register(m)?;
    Ok(())
}
