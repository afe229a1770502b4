//! Token counting for llmthrottle: exact OpenAI BPE encodings and a fast estimator.
//!
//! `o200k_base` and `cl100k_base` give the same tokens as tiktoken on every input (special-token
//! text such as `<|endoftext|>` is ordinary text, as in tiktoken's `encode_ordinary`). With the
//! `hf` feature, Hugging Face `tokenizer.json` files load too (`hf.rs`); `Tokenizer` is either.
//!
//! Designs tried and dropped:
//! - `bpe-openai` (GitHub's rust-gems): its build embeds serialized automata of 32 MB (o200k)
//!   and 15 MB (cl100k), far over our 25 MB module budget, and it counted only ~31 MB/s on Python
//!   source here (its regex-automata pretokenizer alone ran ~100 MB/s).
//! - `tiktoken-rs` at run time: tiktoken's own algorithm (fancy-regex), so tiktoken's speed.
//! - One `HashMap<&[u8], u32>`: counting waited on its cache misses and `memcmp`s (~60 MB/s).
//!
//! What we do instead: the vocabularies come from `tiktoken-rs`'s bundled files at *build* time
//! (`build.rs`; nothing vendored, nothing downloaded), each regex is replaced by a hand-written
//! scanner over Unicode class tables generated from `regex-syntax` (`pretokenize.rs`), ranks
//! live in packed-key tables behind an L2-sized Bloom filter (`vocab.rs`), and a per-thread
//! memo answers repeated pieces (`cache.rs`). The merge order is tiktoken's (`bpe.rs`).

mod bpe;
mod cache;
mod estimate;
#[cfg(feature = "hf")]
mod hf;
mod huge;
mod pretokenize;
mod tokenizer;
mod unicode;
mod vocab;

use std::fmt;
use std::sync::LazyLock;

pub use estimate::{estimate_with, features as estimator_features, Coefficients, FEATURE_NAMES};
#[cfg(feature = "hf")]
pub use hf::{HfEncoding, MAX_TOKENIZER_JSON_BYTES};
use pretokenize::{Pieces, Splitter};
pub use tokenizer::Tokenizer;
use vocab::Vocab;

pub use vocab::Rank;

/// Names of the built-in encodings.
pub const ENCODING_NAMES: [&str; 2] = ["o200k_base", "cl100k_base"];

/// An error of this crate; every message names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No built-in encoding has this name.
    UnknownEncoding(String),
    /// A token id that the encoding does not have (in `decode`).
    UnknownToken(u32),
    /// A tokenizer file could not be read (`os_code` is the OS error number, when there is one).
    Io {
        path: String,
        message: String,
        os_code: Option<i32>,
    },
    /// The file (or text) named `source` is not a tokenizer this crate can load.
    InvalidTokenizer { source: String, message: String },
    /// The tokenizer file is larger than any real one; refused before parsing.
    TooLarge { source: String, bytes: u64, limit: u64 },
    /// A loaded tokenizer may not be called this (empty, or a built-in encoding's name).
    ReservedName(String),
    /// A loaded tokenizer could not encode or decode (for example: no unknown token).
    Encode(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::UnknownEncoding(name) => write!(
                f,
                "unknown encoding {name:?}; known encodings: {}",
                ENCODING_NAMES.join(", ")
            ),
            TokenError::UnknownToken(token) => write!(f, "token id {token} is not in the encoding"),
            TokenError::Io { path, message, .. } => {
                write!(f, "cannot read tokenizer file {path:?}: {message}")
            }
            TokenError::InvalidTokenizer { source, message } => {
                write!(f, "{source:?} is not a usable tokenizer.json: {message}")
            }
            TokenError::TooLarge { source, bytes, limit } => write!(
                f,
                "tokenizer file {source:?} is {bytes} bytes, over the {limit}-byte limit \
                 (real tokenizer.json files are under 50 MB)"
            ),
            TokenError::ReservedName(name) => write!(
                f,
                "a loaded tokenizer cannot be named {name:?}: names must be non-empty and differ \
                 from the built-in encodings ({})",
                ENCODING_NAMES.join(", ")
            ),
            TokenError::Encode(message) => write!(f, "the tokenizer failed: {message}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// One exact BPE encoding (vocabulary + pretokenizer).
pub struct Encoding {
    name: &'static str,
    /// Distinguishes the encodings in the per-thread count cache.
    tag: u8,
    splitter: Splitter,
    vocab: Vocab,
    special_tokens: &'static [(&'static str, Rank)],
    coefficients: &'static Coefficients,
}

static O200K_BASE: LazyLock<Encoding> = LazyLock::new(|| Encoding {
    name: "o200k_base",
    tag: 1,
    splitter: Splitter::O200k,
    vocab: Vocab::from_blob(include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.vocab"))),
    special_tokens: &[("<|endoftext|>", 199_999), ("<|endofprompt|>", 200_018)],
    coefficients: &estimate::O200K_COEFFICIENTS,
});

static CL100K_BASE: LazyLock<Encoding> = LazyLock::new(|| Encoding {
    name: "cl100k_base",
    tag: 2,
    splitter: Splitter::Cl100k,
    vocab: Vocab::from_blob(include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.vocab"))),
    special_tokens: &[
        ("<|endoftext|>", 100_257),
        ("<|fim_prefix|>", 100_258),
        ("<|fim_middle|>", 100_259),
        ("<|fim_suffix|>", 100_260),
        ("<|endofprompt|>", 100_276),
    ],
    coefficients: &estimate::CL100K_COEFFICIENTS,
});

/// The built-in encoding called `name` (loaded on first use, then shared).
pub fn get_encoding(name: &str) -> Result<&'static Encoding, TokenError> {
    match name {
        "o200k_base" => Ok(&O200K_BASE),
        "cl100k_base" => Ok(&CL100K_BASE),
        _ => Err(TokenError::UnknownEncoding(name.to_owned())),
    }
}

impl Encoding {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One more than the largest token id (special tokens included).
    pub fn vocab_size(&self) -> usize {
        let special_max = self.special_tokens.iter().map(|&(_, r)| r as usize + 1).max();
        special_max.unwrap_or(0).max(self.vocab.len())
    }

    /// Exact number of tokens of `text`.
    pub fn count(&self, text: &str) -> usize {
        cache::with_cache(|cache| {
            Pieces::new(text, self.splitter)
                .map(|piece| bpe::count_piece(&self.vocab, piece, cache, self.tag))
                .sum()
        })
    }

    /// Exact counts of many texts, spread over all cores.
    pub fn count_batch<T: AsRef<str> + Sync>(&self, texts: &[T]) -> Vec<usize> {
        use rayon::prelude::*;
        texts.par_iter().map(|text| self.count(text.as_ref())).collect()
    }

    /// The count if it is at most `limit`, else None; stops reading the text once past it.
    pub fn count_till_limit(&self, text: &str, limit: usize) -> Option<usize> {
        cache::with_cache(|cache| {
            let mut total = 0usize;
            for piece in Pieces::new(text, self.splitter) {
                total += bpe::count_piece(&self.vocab, piece, cache, self.tag);
                if total > limit {
                    return None;
                }
            }
            Some(total)
        })
    }

    /// Token ids of `text`, as tiktoken's `encode_ordinary`.
    pub fn encode(&self, text: &str) -> Vec<Rank> {
        let mut out = Vec::with_capacity(text.len() / 3);
        for piece in Pieces::new(text, self.splitter) {
            bpe::encode_piece(&self.vocab, piece, &mut out);
        }
        out
    }

    /// Bytes of the tokens (special tokens decode to their text).
    pub fn decode_bytes(&self, tokens: &[Rank]) -> Result<Vec<u8>, TokenError> {
        let mut out = Vec::with_capacity(tokens.len() * 4);
        for &token in tokens {
            if let Some(bytes) = self.vocab.token_bytes(token) {
                out.extend_from_slice(bytes);
            } else if let Some((text, _)) = self.special_tokens.iter().find(|&&(_, r)| r == token) {
                out.extend_from_slice(text.as_bytes());
            } else {
                return Err(TokenError::UnknownToken(token));
            }
        }
        Ok(out)
    }

    /// Text of the tokens; bytes that are not valid UTF-8 become U+FFFD (tiktoken's default).
    pub fn decode(&self, tokens: &[Rank]) -> Result<String, TokenError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(tokens)?).into_owned())
    }

    /// Fast approximate count: no vocabulary walk (see `estimate.rs` for the error figures).
    pub fn estimate(&self, text: &str) -> usize {
        estimate_with(self.coefficients, text)
    }

    /// The estimator's per-class coefficients for this encoding.
    pub fn coefficients(&self) -> &'static Coefficients {
        self.coefficients
    }
}

impl fmt::Debug for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoding")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_round_trips() {
        let enc = get_encoding("o200k_base").unwrap();
        assert_eq!(enc.encode("hello world"), vec![24912, 2375]);
        assert_eq!(enc.count("hello world"), 2);
        let text = "Größe 日本語 🎉 <|endoftext|>\n\n  x";
        assert_eq!(enc.decode(&enc.encode(text)).unwrap(), text);
        let cl = get_encoding("cl100k_base").unwrap();
        assert_eq!(cl.encode("hello world"), vec![15339, 1917]);
        assert_eq!(cl.count_batch(&["hello world", "", "a"]), vec![2, 0, 1]);
    }

    #[test]
    fn long_runs_take_the_heap_path_and_agree_with_the_scan() {
        let enc = get_encoding("o200k_base").unwrap();
        for unit in ["a", "ab", "xyz ", "é", "1"] {
            let text = unit.repeat(300);
            let tokens = enc.encode(&text);
            assert_eq!(enc.decode(&tokens).unwrap(), text);
            assert_eq!(tokens.len(), enc.count(&text));
        }
    }

    #[test]
    fn count_till_limit_stops_past_the_limit() {
        let enc = get_encoding("cl100k_base").unwrap();
        let n = enc.count("one two three four");
        assert_eq!(enc.count_till_limit("one two three four", n), Some(n));
        assert_eq!(enc.count_till_limit("one two three four", n - 1), None);
        assert_eq!(enc.count_till_limit("", 0), Some(0));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = get_encoding("p50k").unwrap_err();
        assert!(err.to_string().contains("o200k_base"));
        let enc = get_encoding("o200k_base").unwrap();
        assert_eq!(enc.decode(&[199_999]).unwrap(), "<|endoftext|>");
        assert_eq!(enc.decode(&[300_000]), Err(TokenError::UnknownToken(300_000)));
    }
}
