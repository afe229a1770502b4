//! Hugging Face `tokenizer.json` files (Llama, Mistral, Qwen, DeepSeek, ...) through the
//! `tokenizers` crate, built with no hub client and pure-Rust regexes (`fancy-regex`).
//!
//! A file is read from a path the caller gives; nothing is ever downloaded. Text is encoded as
//! `tokenizers` encodes it with `add_special_tokens=False`: the model's template tokens (a BOS
//! such as `<|begin_of_text|>`) are not added, and the tokenizer's added tokens written in the
//! text (`<|eot_id|>`, `<think>`) are each one token, as in `transformers`. Truncation and padding
//! saved in the file are switched off, since a count must see all of the text.
//!
//! Not used:
//! - The `onig` regex backend (the Python package's): a C library built by `cc`. Llama-3's
//!   pattern splits every code point in context the same on `fancy-regex`, and the DeepSeek and
//!   Qwen patterns agree on the test corpus (tests/test_tokens_hf.py).
//! - `tokenizers` 1.0 release candidates: not a stable release yet.
//! - The crate's `encode_batch`: its own thread pool switch; `Tokenizer::count_batch` uses ours.

use std::fs::File;
use std::io::{self, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use tokenizers::Tokenizer;

use crate::estimate::{self, Coefficients, FEATURES};
use crate::{Rank, TokenError};

/// Larger files are refused: the biggest real ones (256k-entry vocabularies) are ~35 MB, and
/// parsing costs several times the file size in memory.
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 256 << 20;

/// A tokenizer loaded from a `tokenizer.json` file.
pub struct HfEncoding {
    name: String,
    path: Option<PathBuf>,
    tokenizer: Tokenizer,
    vocab_size: usize,
    coefficients: Coefficients,
}

impl HfEncoding {
    /// Loads `path`, or `path/tokenizer.json` when `path` is a directory.
    /// The name defaults to the path.
    pub fn from_file(path: &Path, name: Option<String>) -> Result<Self, TokenError> {
        if let Some(name) = &name {
            check_name(name)?;
        }
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_owned()
        };
        let json = read_limited(&path)?;
        let name = name.unwrap_or_else(|| path.display().to_string());
        let mut encoding = Self::from_json(&json, name).map_err(|err| match err {
            TokenError::InvalidTokenizer { message, .. } => TokenError::InvalidTokenizer {
                source: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        encoding.path = Some(path);
        Ok(encoding)
    }

    /// Parses the text of a `tokenizer.json` file.
    pub fn from_json(json: &[u8], name: String) -> Result<Self, TokenError> {
        check_name(&name)?;
        let invalid = |message: String| TokenError::InvalidTokenizer {
            source: name.clone(),
            message,
        };
        if json.len() as u64 > MAX_TOKENIZER_JSON_BYTES {
            return Err(TokenError::TooLarge {
                source: name,
                bytes: json.len() as u64,
                limit: MAX_TOKENIZER_JSON_BYTES,
            });
        }
        // Syntax first (no allocation), so that "not JSON" and "not a tokenizer" read differently:
        // the tokenizer's own deserializer reports some wrong shapes as syntax errors.
        serde_json::from_slice::<IgnoredAny>(json).map_err(|err| invalid(format!("not JSON: {err}")))?;
        let mut tokenizer = shielded(|| serde_json::from_slice::<Tokenizer>(json))
            .map_err(invalid)?
            .map_err(|err| invalid(format!("not a Hugging Face tokenizer.json: {err}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|err| invalid(err.to_string()))?;
        let vocab_size = shielded(|| {
            tokenizer
                .get_vocab(true)
                .values()
                .max()
                .map_or(0, |&id| id as usize + 1)
        })
        .map_err(invalid)?;
        let mut encoding = HfEncoding {
            name,
            path: None,
            tokenizer,
            vocab_size,
            coefficients: estimate::CL100K_COEFFICIENTS,
        };
        encoding.coefficients = encoding.calibrated_coefficients();
        Ok(encoding)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from (after `tokenizer.json` was appended to a directory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// One more than the largest token id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token ids of `text`, as `tokenizer.encode(text, add_special_tokens=False).ids`.
    pub fn encode(&self, text: &str) -> Result<Vec<Rank>, TokenError> {
        Ok(self.run(text)?.get_ids().to_vec())
    }

    /// Exact number of tokens of `text`.
    pub fn count(&self, text: &str) -> Result<usize, TokenError> {
        Ok(self.run(text)?.len())
    }

    /// `encode_fast` skips the character offsets that `encode` computes and we never read.
    fn run(&self, text: &str) -> Result<tokenizers::Encoding, TokenError> {
        shielded(|| self.tokenizer.encode_fast(text, false).map_err(|err| err.to_string()))
            .map_err(TokenError::Encode)?
            .map_err(TokenError::Encode)
    }

    /// Text of token ids (added and special tokens included), as `tokenizer.decode(ids,
    /// skip_special_tokens=False)`; an id the tokenizer does not have is an error, not skipped.
    pub fn decode(&self, tokens: &[Rank]) -> Result<String, TokenError> {
        if let Some(&unknown) = tokens.iter().find(|&&id| self.tokenizer.id_to_token(id).is_none()) {
            return Err(TokenError::UnknownToken(unknown));
        }
        shielded(|| self.tokenizer.decode(tokens, false).map_err(|err| err.to_string()))
            .map_err(TokenError::Encode)?
            .map_err(TokenError::Encode)
    }

    /// Fast approximate count: the estimator's features weighted by cl100k's coefficients,
    /// rescaled to this tokenizer at load time (see `calibrated_coefficients`).
    pub fn estimate(&self, text: &str) -> usize {
        estimate::estimate_with(&self.coefficients, text)
    }

    /// The cl100k coefficients scaled to this tokenizer: one factor for the ASCII features,
    /// measured on English prose and code, and one for the non-ASCII features, measured on text
    /// in other scripts. A 32k-entry SentencePiece vocabulary needs ~1.3x cl100k's count on
    /// English and more on CJK; one factor for both would miss one of them.
    /// A tokenizer that cannot encode the samples (no unknown token) keeps cl100k's weights.
    fn calibrated_coefficients(&self) -> Coefficients {
        let mut scaled = estimate::CL100K_COEFFICIENTS;
        let (Ok(ascii_exact), Ok(other_exact)) = (self.count(CALIBRATION_ASCII), self.count(CALIBRATION_OTHER_SCRIPTS))
        else {
            return scaled;
        };
        let split = |text: &str| {
            let features = estimate::features(text);
            let mut ascii = 0.0;
            let mut other = 0.0;
            for (i, &count) in features.iter().enumerate() {
                let part = count as f64 * scaled.0[i];
                if NON_ASCII_FEATURES.contains(&i) {
                    other += part;
                } else {
                    ascii += part;
                }
            }
            (ascii, other)
        };
        let (ascii_base, _) = split(CALIBRATION_ASCII);
        let ascii_scale = (ascii_exact as f64 / ascii_base).clamp(0.2, 10.0);
        let (ascii_part, other_part) = split(CALIBRATION_OTHER_SCRIPTS);
        let other_scale = ((other_exact as f64 - ascii_scale * ascii_part) / other_part).clamp(0.2, 10.0);
        for i in 0..FEATURES {
            scaled.0[i] *= if NON_ASCII_FEATURES.contains(&i) {
                other_scale
            } else {
                ascii_scale
            };
        }
        scaled
    }
}

impl std::fmt::Debug for HfEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfEncoding")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Indexes of the estimator features that count non-ASCII characters (see `FEATURE_NAMES`).
const NON_ASCII_FEATURES: [usize; 5] = [10, 11, 12, 13, 14];

const CALIBRATION_ASCII: &str = "\
The limiter admits a request when the tokens it asks for fit in the bucket, and tells the \
caller how long to wait when they do not. Budgets are kept in dollars: every call is charged at \
its worst-case cost before it leaves, then reconciled with the usage the provider reports.\n\n\
def count_tokens(text: str, model: str | None = None) -> int:\n    \
if not text:\n        return 0\n    enc = encoding_for_model(model)\n    \
return enc.count(text)  # exact, GIL released\n\n\
for (i, row) in rows.iter().enumerate() { total += row.len() * 3 + 17; }\n\
Version 2.4.1 shipped on 2024-03-15 with 1,024 slots; see https://example.com/docs?q=limits.\n";

const CALIBRATION_OTHER_SCRIPTS: &str = "\
Die Anfrage wurde abgelehnt, weil das Tageskontingent überschritten ist. \
Запрос отклонён: дневной лимит токенов исчерпан, повторите попытку позже. \
请求被拒绝，因为今天的令牌额度已经用完，请稍后再试。 \
リクエストは拒否されました。本日のトークン上限に達しています。 \
요청이 거부되었습니다. 오늘의 토큰 한도를 초과했습니다. \
تم رفض الطلب لأن الحد اليومي قد تم تجاوزه. \
Η αίτηση απορρίφθηκε επειδή ξεπεράστηκε το ημερήσιο όριο. \
अनुरोध अस्वीकार कर दिया गया क्योंकि दैनिक सीमा पार हो गई है। \
Done 🎉👍 ✅ 🚀\n";

/// A loaded tokenizer may not take a built-in encoding's name: names find encodings.
fn check_name(name: &str) -> Result<(), TokenError> {
    if name.is_empty() || crate::ENCODING_NAMES.contains(&name) {
        return Err(TokenError::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// Runs `f`, turning a panic inside `tokenizers` (a malformed file can reach one) into an error.
fn shielded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("the tokenizers library failed: {message}")
    })
}

/// Reads at most `MAX_TOKENIZER_JSON_BYTES` (a FIFO or `/dev/zero` has no size to check first).
fn read_limited(path: &Path) -> Result<Vec<u8>, TokenError> {
    let io_error = |err: io::Error| TokenError::Io {
        path: path.display().to_string(),
        message: err.to_string(),
        os_code: err.raw_os_error(),
    };
    let file = File::open(path).map_err(io_error)?;
    let too_large = |bytes| TokenError::TooLarge {
        source: path.display().to_string(),
        bytes,
        limit: MAX_TOKENIZER_JSON_BYTES,
    };
    let declared = file.metadata().map_err(io_error)?.len();
    if declared > MAX_TOKENIZER_JSON_BYTES {
        return Err(too_large(declared));
    }
    let mut json = Vec::with_capacity(declared as usize);
    file.take(MAX_TOKENIZER_JSON_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(io_error)?;
    if json.len() as u64 > MAX_TOKENIZER_JSON_BYTES {
        return Err(too_large(json.len() as u64));
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE with the merges "h e", "l l", "he ll", "hell o" over a 256-byte alphabet.
    fn tiny_tokenizer_json() -> String {
        let alphabet: Vec<String> = (0u8..=255).map(byte_level_char).collect();
        let mut vocab: Vec<(String, u32)> = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as u32))
            .collect();
        for (i, token) in ["he", "ll", "hell", "hello"].iter().enumerate() {
            vocab.push((token.to_string(), 256 + i as u32));
        }
        let vocab = vocab
            .iter()
            .map(|(t, i)| format!("{}: {i}", serde_json::to_string(t).unwrap()));
        format!(
            r#"{{"version": "1.0", "truncation": {{"max_length": 2, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}},
            "padding": null,
            "added_tokens": [{{"id": 260, "content": "<|end|>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}}],
            "normalizer": null,
            "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}},
            "post_processor": null,
            "decoder": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}},
            "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": {{{}}}, "merges": ["h e", "l l", "he ll", "hell o"]}}}}"#,
            vocab.collect::<Vec<_>>().join(", ")
        )
    }

    /// GPT-2's printable stand-in for a byte.
    fn byte_level_char(byte: u8) -> String {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(byte) {
            return char::from(byte).to_string();
        }
        let offset = (0u8..byte).filter(|&b| !printable(b)).count() as u32;
        char::from_u32(256 + offset).unwrap().to_string()
    }

    #[test]
    fn encodes_counts_and_decodes_a_tiny_bpe() {
        let enc = HfEncoding::from_json(tiny_tokenizer_json().as_bytes(), "tiny".into()).unwrap();
        assert_eq!(enc.encode("hello").unwrap(), vec![259]);
        // Truncation saved in the file (max_length 2) is off: every token counts.
        assert_eq!(enc.count("hello hello hello").unwrap(), 5);
        assert_eq!(enc.encode("hello<|end|>").unwrap(), vec![259, 260]);
        assert_eq!(enc.decode(&[259, 260]).unwrap(), "hello<|end|>");
        assert_eq!(enc.decode(&[9999]), Err(TokenError::UnknownToken(9999)));
        assert_eq!(enc.vocab_size(), 261);
        assert!(enc.estimate("hello world") > 0);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_problem() {
        let err = HfEncoding::from_json(b"{not json", "x".into()).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        let err = HfEncoding::from_json(br#"{"version": "1.0"}"#, "x".into()).unwrap_err();
        assert!(err.to_string().contains("not a Hugging Face tokenizer"), "{err}");
        let err = HfEncoding::from_json(br#"{"model": {"type": "BPE", "vocab": 3}}"#, "x".into()).unwrap_err();
        assert!(matches!(err, TokenError::InvalidTokenizer { .. }), "{err}");
        let err = HfEncoding::from_file(Path::new("/nonexistent/tokenizer.json"), None).unwrap_err();
        assert!(matches!(err, TokenError::Io { os_code: Some(2), .. }), "{err}");
    }
}
