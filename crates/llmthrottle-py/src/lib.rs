//! `llmthrottle._native`: the only door from Python into the Rust engine.
//!
//! This crate converts types, releases the GIL around pure-Rust work and maps errors;
//! every rule lives in `llmthrottle-core` or `llmthrottle-tokens`.

use pyo3::prelude::*;

mod errors;
mod tokens;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    tokens::register(m)?;
    Ok(())
}
