//! Python face of `llmthrottle-tokens`: the `Encoding` class, over a built-in encoding or (feature
//! `hf`) a Hugging Face `tokenizer.json` loaded by `Encoding.from_tokenizer_json`.
//!
//! Text arguments may be `str` or UTF-8 `bytes`. A `str` holding lone surrogates is repaired the
//! way tiktoken repairs it (UTF-16 round trip with replacement), so counts stay identical.
//! The GIL is released around counting of anything but short texts.

use std::borrow::Cow;

use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyUnicodeDecodeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use smallvec::SmallVec;

use llmthrottle_tokens::{estimator_features, get_encoding, TokenError, Tokenizer, FEATURE_NAMES};

use crate::errors::{ConfigError, InvalidInput, InvalidType};

/// Below this many bytes, releasing and retaking the GIL costs more than the counting.
const DETACH_MIN_BYTES: usize = 4096;

/// An exact tokenizer: `o200k_base`, `cl100k_base`, or a loaded `tokenizer.json`.
#[pyclass(module = "llmthrottle._native", name = "Encoding", frozen)]
pub struct PyEncoding {
    inner: Tokenizer,
}

/// Unreadable files are `OSError`s (with errno, so `FileNotFoundError` and friends); a file that
/// is not a tokenizer is a `ConfigError`; an id not in the vocabulary or a failed encode is a
/// `ValueError`.
fn to_py_error(err: TokenError) -> PyErr {
    match err {
        TokenError::Io {
            ref path,
            os_code: Some(code),
            ..
        } => PyOSError::new_err((code, err.to_string(), path.clone())),
        TokenError::Io { .. } => PyOSError::new_err(err.to_string()),
        TokenError::UnknownEncoding(_)
        | TokenError::InvalidTokenizer { .. }
        | TokenError::TooLarge { .. }
        | TokenError::ReservedName(_) => ConfigError::new_err(err.to_string()),
        TokenError::UnknownToken(_) | TokenError::Encode(_) => InvalidInput::new_err(err.to_string()),
    }
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
    Err(InvalidType::new_err(format!(
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
        Ok(PyEncoding {
            inner: get_encoding(name).map_err(to_py_error)?.into(),
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (or the one in a directory); never downloads.
    #[classmethod]
    #[pyo3(signature = (path, *, name=None))]
    fn from_tokenizer_json(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: PathBuf,
        name: Option<String>,
    ) -> PyResult<Self> {
        load_tokenizer_json(py, path, name)
    }

    /// The encoding's name: "o200k_base", or the tokenizer.json path unless a name was given.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// One more than the largest token id, special tokens included.
    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.vocab_size()
    }

    /// `(input tokens, output reservation)` of a chat body in its plainest and most common
    /// shape, counted in one call: a `messages` list of `{"role": str, "content": str}` objects,
    /// optionally a string `system_key` field, no `tools` or `functions`. Each message costs
    /// `tokens_per_message` plus its two texts, the system text likewise, and `reply_priming`
    /// is added once; the reservation is the first of `output_keys` present, else
    /// `default_max_output_tokens`. None for any other body: the caller walks it in Python,
    /// where every shape and every error is handled (and which is this method's test oracle).
    #[allow(clippy::too_many_arguments)] // the body's rules, given by position: every call asks
    #[pyo3(signature = (body, tokens_per_message, reply_priming, system_key, output_keys, default_max_output_tokens, /))]
    fn plain_chat_estimate(
        &self,
        py: Python<'_>,
        body: &Bound<'_, PyAny>,
        tokens_per_message: usize,
        reply_priming: usize,
        system_key: Option<&str>,
        output_keys: &Bound<'_, PyTuple>,
        default_max_output_tokens: u64,
    ) -> PyResult<Option<(usize, u64)>> {
        let Ok(body) = body.cast::<PyDict>() else {
            return Ok(None);
        };
        for key in ["tools", "functions"] {
            if body.get_item(key)?.is_some_and(|value| !value.is_none()) {
                return Ok(None);
            }
        }
        let mut strings: SmallVec<[Bound<'_, PyString>; 8]> = SmallVec::new();
        let mut framing = reply_priming;
        if let Some(key) = system_key {
            if let Some(system) = body.get_item(key)?.filter(|value| !value.is_none()) {
                let Ok(system) = system.cast_into::<PyString>() else {
                    return Ok(None);
                };
                framing += tokens_per_message;
                strings.push(system);
            }
        }
        let Some(messages) = body.get_item("messages")? else {
            return Ok(None);
        };
        let Ok(messages) = messages.cast_into::<PyList>() else {
            return Ok(None);
        };
        for message in messages.iter() {
            let Ok(message) = message.cast_into::<PyDict>() else {
                return Ok(None);
            };
            if message.len() != 2 {
                return Ok(None);
            }
            for field in ["role", "content"] {
                let Some(Ok(text)) = message.get_item(field)?.map(|value| value.cast_into::<PyString>()) else {
                    return Ok(None);
                };
                strings.push(text);
            }
            framing += tokens_per_message;
        }
        let mut reserve = default_max_output_tokens;
        for key in output_keys.iter() {
            let Some(value) = body.get_item(key)?.filter(|value| !value.is_none()) else {
                continue;
            };
            if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
                return Ok(None);
            }
            let Ok(value) = value.extract::<u64>() else {
                return Ok(None);
            };
            reserve = value;
            break;
        }
        let mut texts: SmallVec<[&str; 8]> = SmallVec::with_capacity(strings.len());
        for string in &strings {
            let Ok(text) = string.to_str() else {
                return Ok(None); // lone surrogates: repaired on the Python path
            };
            texts.push(text);
        }
        let bytes = texts.iter().map(|text| text.len()).sum();
        let inner = &self.inner;
        let counted = run(py, bytes, || {
            texts
                .iter()
                .try_fold(0usize, |total, text| Ok::<_, TokenError>(total + inner.count(text)?))
        })
        .map_err(to_py_error)?;
        Ok(Some((framing + counted, reserve)))
    }

    /// Exact number of tokens of `text`.
    fn count(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let inner = &self.inner;
        run(py, text.len(), || inner.count(&text)).map_err(to_py_error)
    }

    /// The exact count if it is at most `limit`, else None (stops reading once past the limit).
    fn count_till_limit(&self, py: Python<'_>, text: &Bound<'_, PyAny>, limit: usize) -> PyResult<Option<usize>> {
        let text = text_arg(text, "text")?;
        let inner = &self.inner;
        run(py, text.len(), || inner.count_till_limit(&text, limit)).map_err(to_py_error)
    }

    /// Exact counts of many texts, counted on all cores with the GIL released.
    fn count_batch(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        if texts.is_instance_of::<PyString>() || texts.is_instance_of::<PyBytes>() {
            return Err(InvalidType::new_err(
                "texts must be a sequence of str, not a single str",
            ));
        }
        let items: Vec<Bound<'_, PyAny>> = texts.try_iter()?.collect::<PyResult<_>>()?;
        let texts: Vec<Cow<'_, str>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| text_arg(item, &format!("texts[{i}]")))
            .collect::<PyResult<_>>()?;
        let inner = &self.inner;
        py.detach(|| inner.count_batch(&texts)).map_err(to_py_error)
    }

    /// Token ids of `text`: built-in encodings treat special-token text as ordinary text (like
    /// `encode_ordinary`); a tokenizer.json encodes as `encode(text, add_special_tokens=False)`.
    fn encode(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text = text_arg(text, "text")?;
        let inner = &self.inner;
        run(py, text.len(), || inner.encode(&text)).map_err(to_py_error)
    }

    /// Text of token ids; bytes that are not valid UTF-8 become U+FFFD.
    fn decode(&self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<String> {
        let inner = &self.inner;
        run(py, tokens.len() * 4, || inner.decode(&tokens)).map_err(to_py_error)
    }

    /// Fast approximate count (no vocabulary walk); see `llmthrottle.tokens` for its error.
    fn estimate(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let inner = &self.inner;
        Ok(run(py, text.len() / 16, || inner.estimate(&text)))
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            Tokenizer::Builtin(enc) => format!("Encoding('{}')", enc.name()),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => {
                let path = enc.path().map(|p| p.display().to_string()).unwrap_or_default();
                if path == enc.name() {
                    format!("Encoding.from_tokenizer_json({path:?})")
                } else {
                    format!("Encoding.from_tokenizer_json({path:?}, name={:?})", enc.name())
                }
            }
        }
    }
}

#[cfg(feature = "hf")]
fn load_tokenizer_json(py: Python<'_>, path: PathBuf, name: Option<String>) -> PyResult<PyEncoding> {
    let loaded = py.detach(|| llmthrottle_tokens::HfEncoding::from_file(&path, name));
    Ok(PyEncoding {
        inner: loaded.map_err(to_py_error)?.into(),
    })
}

#[cfg(not(feature = "hf"))]
fn load_tokenizer_json(_py: Python<'_>, _path: PathBuf, _name: Option<String>) -> PyResult<PyEncoding> {
    Err(ConfigError::new_err(
        "this build of llmthrottle has no tokenizer.json support (Rust feature `hf` is off)",
    ))
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
