//! Python face of `llmthrottle-tokens`: the `Encoding` class.
//!
//! Text arguments may be `str` or UTF-8 `bytes`. A `str` holding lone surrogates is repaired the
//! way tiktoken repairs it (UTF-16 round trip with replacement), so counts stay identical.
//! The GIL is released around counting of anything but short texts.

use std::borrow::Cow;

use pyo3::exceptions::{PyTypeError, PyUnicodeDecodeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use llmthrottle_tokens::{estimator_features, get_encoding, Encoding, TokenError, FEATURE_NAMES};

use crate::errors::ConfigError;

/// Below this many bytes, releasing and retaking the GIL costs more than the counting.
const DETACH_MIN_BYTES: usize = 4096;

/// An exact tokenizer (`o200k_base`, `cl100k_base`).
#[pyclass(module = "llmthrottle._native", name = "Encoding", frozen)]
pub struct PyEncoding {
    inner: &'static Encoding,
}

fn config_error(err: TokenError) -> PyErr {
    ConfigError::new_err(err.to_string())
}

/// Borrows the UTF-8 text of a `str` or `bytes` argument called `what`.
fn text_arg<'a, 'py>(obj: &'a Bound<'py, PyAny>, what: &str) -> PyResult<Cow<'a, str>> {
    if let Ok(string) = obj.cast::<PyString>() {
        return match string.to_str() {
            Ok(text) => Ok(Cow::Borrowed(text)),
            // Lone surrogates: tiktoken's own repair, so both count the same text.
            Err(_) => {
                let repaired = string
                    .call_method1("encode", ("utf-16", "surrogatepass"))?
                    .call_method1("decode", ("utf-16", "replace"))?;
                Ok(Cow::Owned(repaired.cast::<PyString>()?.to_str()?.to_owned()))
            }
        };
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        let raw = bytes.as_bytes();
        return match std::str::from_utf8(raw) {
            Ok(text) => Ok(Cow::Borrowed(text)),
            Err(err) => Err(PyErr::from_value(
                PyUnicodeDecodeError::new_utf8(obj.py(), raw, err)?.into_any(),
            )),
        };
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be str or bytes (UTF-8), not {}",
        obj.get_type().name()?
    )))
}

fn run<T: Send>(py: Python<'_>, bytes: usize, work: impl FnOnce() -> T + Send) -> T {
    if bytes >= DETACH_MIN_BYTES {
        py.detach(work)
    } else {
        work()
    }
}

#[pymethods]
impl PyEncoding {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        Ok(PyEncoding { inner: get_encoding(name).map_err(config_error)? })
    }

    /// The encoding's name, e.g. "o200k_base".
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// One more than the largest token id, special tokens included.
    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Exact number of tokens of `text`.
    fn count(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let inner = self.inner;
        Ok(run(py, text.len(), || inner.count(&text)))
    }

    /// The exact count if it is at most `limit`, else None (stops reading once past the limit).
    fn count_till_limit(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        limit: usize,
    ) -> PyResult<Option<usize>> {
        let text = text_arg(text, "text")?;
        let inner = self.inner;
        Ok(run(py, text.len(), || inner.count_till_limit(&text, limit)))
    }

    /// Exact counts of many texts, counted on all cores with the GIL released.
    fn count_batch(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        if texts.is_instance_of::<PyString>() || texts.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err("texts must be a sequence of str, not a single str"));
        }
        let items: Vec<Bound<'_, PyAny>> =
            texts.try_iter()?.collect::<PyResult<_>>()?;
        let texts: Vec<Cow<'_, str>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| text_arg(item, &format!("texts[{i}]")))
            .collect::<PyResult<_>>()?;
        let inner = self.inner;
        Ok(py.detach(|| inner.count_batch(&texts)))
    }

    /// Token ids of `text` (special-token text is ordinary text, like `encode_ordinary`).
    fn encode(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text = text_arg(text, "text")?;
        let inner = self.inner;
        Ok(run(py, text.len(), || inner.encode(&text)))
    }

    /// Text of token ids; bytes that are not valid UTF-8 become U+FFFD.
    fn decode(&self, tokens: Vec<u32>) -> PyResult<String> {
        self.inner.decode(&tokens).map_err(|err| PyValueError::new_err(err.to_string()))
    }

    /// Fast approximate count (no vocabulary walk); see `llmthrottle.tokens` for its error.
    fn estimate(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let inner = self.inner;
        Ok(run(py, text.len() / 16, || inner.estimate(&text)))
    }

    fn __repr__(&self) -> String {
        format!("Encoding('{}')", self.inner.name())
    }
}

/// The fast estimator's feature counts of `text`, by name (for fitting its coefficients).
#[pyfunction]
fn _estimator_features(text: &Bound<'_, PyAny>) -> PyResult<Vec<(&'static str, u64)>> {
    let text = text_arg(text, "text")?;
    Ok(FEATURE_NAMES.iter().copied().zip(estimator_features(&text)).collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEncoding>()?;
    m.add_function(wrap_pyfunction!(_estimator_features, m)?)?;
    Ok(())
}
