//! `llmthrottle._native`: the only door from Python into the Rust engine.
//!
//! This crate converts types, maps errors and keeps panics out of Python; every rule lives in
//! `llmthrottle-core` or `llmthrottle-tokens`.

use pyo3::prelude::*;

mod convert;
mod decision;
mod errors;
mod fastcall;
mod in_place;
mod limiter;
mod state;
mod tokens;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    state::register(m)?;
    limiter::register(m)?;
    in_place::register(m)?;
    tokens::register(m)?;
    Ok(())
}
