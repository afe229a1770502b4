//! `Tokenizer`: one type for every tokenizer this crate counts with, so callers (the Python
//! binding) hold one value whatever its source.

#[cfg(feature = "hf")]
use std::sync::Arc;

#[cfg(feature = "hf")]
use crate::hf::HfEncoding;
use crate::{Encoding, Rank, TokenError};

/// A built-in encoding, or (feature `hf`) a tokenizer loaded from a `tokenizer.json` file.
/// Cloning is cheap: both kinds are shared.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    Builtin(&'static Encoding),
    #[cfg(feature = "hf")]
    HuggingFace(Arc<HfEncoding>),
}

impl Tokenizer {
    pub fn name(&self) -> &str {
        match self {
            Tokenizer::Builtin(enc) => enc.name(),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.name(),
        }
    }

    /// One more than the largest token id, special and added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Builtin(enc) => enc.vocab_size(),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.vocab_size(),
        }
    }

    /// Exact number of tokens of `text` (built-in encodings never fail).
    pub fn count(&self, text: &str) -> Result<usize, TokenError> {
        match self {
            Tokenizer::Builtin(enc) => Ok(enc.count(text)),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.count(text),
        }
    }

    /// Exact counts of many texts, spread over all cores.
    pub fn count_batch<T: AsRef<str> + Sync>(&self, texts: &[T]) -> Result<Vec<usize>, TokenError> {
        match self {
            Tokenizer::Builtin(enc) => Ok(enc.count_batch(texts)),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => {
                use rayon::prelude::*;
                texts.par_iter().map(|text| enc.count(text.as_ref())).collect()
            }
        }
    }

    /// The count if it is at most `limit`, else None. Built-in encodings stop reading past the
    /// limit; a loaded tokenizer encodes the whole text (its pipeline has no early exit).
    pub fn count_till_limit(&self, text: &str, limit: usize) -> Result<Option<usize>, TokenError> {
        match self {
            Tokenizer::Builtin(enc) => Ok(enc.count_till_limit(text, limit)),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => Ok(Some(enc.count(text)?).filter(|&n| n <= limit)),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<Rank>, TokenError> {
        match self {
            Tokenizer::Builtin(enc) => Ok(enc.encode(text)),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.encode(text),
        }
    }

    pub fn decode(&self, tokens: &[Rank]) -> Result<String, TokenError> {
        match self {
            Tokenizer::Builtin(enc) => enc.decode(tokens),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.decode(tokens),
        }
    }

    /// Fast approximate count (no vocabulary walk).
    pub fn estimate(&self, text: &str) -> usize {
        match self {
            Tokenizer::Builtin(enc) => enc.estimate(text),
            #[cfg(feature = "hf")]
            Tokenizer::HuggingFace(enc) => enc.estimate(text),
        }
    }
}

impl From<&'static Encoding> for Tokenizer {
    fn from(enc: &'static Encoding) -> Self {
        Tokenizer::Builtin(enc)
    }
}

#[cfg(feature = "hf")]
impl From<HfEncoding> for Tokenizer {
    fn from(enc: HfEncoding) -> Self {
        Tokenizer::HuggingFace(Arc::new(enc))
    }
}
