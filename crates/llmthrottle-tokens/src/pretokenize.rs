//! Hand-written pretokenizers: each splits text exactly where tiktoken's regex would.
//!
//! tiktoken runs its split regex through a backtracking engine; most of its time goes there.
//! These scanners implement the same alternations in the same priority order, with the
//! backtracking each alternative can do written out, over per-code-point class bits (see
//! `unicode.rs`). The regex each function mirrors is quoted next to it; `tests/` and the Python
//! tests check every code point in several contexts against tiktoken itself.

use crate::unicode::{
    char_in, class_at, prev_char_start, FOLD_D, FOLD_E, FOLD_L, FOLD_M, FOLD_R, FOLD_S, FOLD_T, FOLD_V, LETTER,
    LOWER_LIKE, NUMBER, SPACE, UPPER_LIKE,
};

/// Which split regex to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Splitter {
    Cl100k,
    O200k,
}

impl Splitter {
    /// End (exclusive) of the piece that starts at `pos` (< text.len()).
    #[inline(always)]
    pub(crate) fn next_end(self, text: &[u8], pos: usize) -> usize {
        match self {
            Splitter::Cl100k => cl100k_next(text, pos),
            Splitter::O200k => o200k_next(text, pos),
        }
    }
}

/// Iterator over the pieces of `text`.
pub(crate) struct Pieces<'a> {
    text: &'a [u8],
    pos: usize,
    splitter: Splitter,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(text: &'a str, splitter: Splitter) -> Self {
        Pieces {
            text: text.as_bytes(),
            pos: 0,
            splitter,
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let end = self.splitter.next_end(self.text, start);
        debug_assert!(end > start);
        self.pos = end;
        Some(&self.text[start..end])
    }
}

const NOT_PUNCT: u8 = SPACE | LETTER | NUMBER;

#[inline(always)]
fn is_newline(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

/// End of the run of chars that all have one of `bits`, starting at `pos`.
#[inline(always)]
fn run_end(text: &[u8], mut pos: usize, bits: u8) -> usize {
    loop {
        let (class, len) = class_at(text, pos);
        if class & bits == 0 || len == 0 {
            return pos;
        }
        pos += len;
    }
}

/// `[^\s\p{L}\p{N}]+` from `pos`, then the trailing `[\r\n]*` (plus `/` for o200k).
#[inline(always)]
fn punct_run(text: &[u8], mut pos: usize, slash_too: bool) -> usize {
    loop {
        let (class, len) = class_at(text, pos);
        if len == 0 || class & NOT_PUNCT != 0 {
            break;
        }
        pos += len;
    }
    while pos < text.len() && (is_newline(text[pos]) || (slash_too && text[pos] == b'/')) {
        pos += 1;
    }
    pos
}

/// The whitespace alternatives, shared by both encodings (`pos` is at a `\s` char):
/// cl100k `\s++$|\s*[\r\n]|\s+(?!\S)|\s`, o200k `\s*[\r\n]+|\s+(?!\S)|\s+`.
/// Both come to: up to and including the run's last newline, or the whole run if it ends the
/// text (cl100k tries `$` before the newline rule, o200k after); else the run minus its last
/// char (that char then prefixes the next word); else one char.
#[inline(always)]
fn whitespace(text: &[u8], pos: usize, first_len: usize, end_of_text_first: bool) -> usize {
    let mut end = pos;
    let mut last_start = pos;
    let mut after_newline = None;
    loop {
        let (class, len) = class_at(text, end);
        if len == 0 || class & SPACE == 0 {
            break;
        }
        if is_newline(text[end]) {
            after_newline = Some(end + 1);
        }
        last_start = end;
        end += len;
    }
    if end == text.len() && end_of_text_first {
        return end;
    }
    if let Some(after) = after_newline {
        return after;
    }
    if end == text.len() {
        return end;
    }
    if last_start > pos {
        last_start
    } else {
        pos + first_len
    }
}

/// cl100k_base:
/// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
fn cl100k_next(text: &[u8], pos: usize) -> usize {
    let first = text[pos];
    if first == b'\'' {
        if let Some(end) = contraction_cl100k(text, pos + 1) {
            return end;
        }
    }
    let (class, len) = class_at(text, pos);
    if class & LETTER != 0 {
        return run_end(text, pos + len, LETTER);
    }
    if class & NUMBER != 0 {
        return digits(text, pos + len, 2);
    }
    // `[^\r\n\p{L}\p{N}]?+\p{L}++`: one non-letter, non-digit char before a word.
    let (next_class, next_len) = class_at(text, pos + len);
    if !is_newline(first) && next_class & LETTER != 0 {
        return run_end(text, pos + len + next_len, LETTER);
    }
    if class & SPACE == 0 {
        return punct_run(text, pos, false);
    }
    if first == b' ' && next_len != 0 && next_class & NOT_PUNCT == 0 {
        return punct_run(text, pos + 1, false);
    }
    whitespace(text, pos, len, true)
}

/// `(?i:[sdmt]|ll|ve|re)` after an apostrophe at `pos - 1`.
#[inline(always)]
fn contraction_cl100k(text: &[u8], pos: usize) -> Option<usize> {
    for single in [FOLD_S, FOLD_D, FOLD_M, FOLD_T] {
        if let Some(len) = char_in(text, pos, single) {
            return Some(pos + len);
        }
    }
    for (a, b) in [(FOLD_L, FOLD_L), (FOLD_V, FOLD_E), (FOLD_R, FOLD_E)] {
        if let Some(len_a) = char_in(text, pos, a) {
            if let Some(len_b) = char_in(text, pos + len_a, b) {
                return Some(pos + len_a + len_b);
            }
        }
    }
    None
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `pos`: the end after the optional contraction.
#[inline(always)]
fn contraction_o200k(text: &[u8], pos: usize) -> usize {
    if text.get(pos) == Some(&b'\'') {
        contraction_cl100k(text, pos + 1).unwrap_or(pos)
    } else {
        pos
    }
}

/// `\p{N}{1,3}` after the first digit: up to `more` further digits.
#[inline(always)]
fn digits(text: &[u8], mut pos: usize, more: usize) -> usize {
    for _ in 0..more {
        let (class, len) = class_at(text, pos);
        if len == 0 || class & NUMBER == 0 {
            break;
        }
        pos += len;
    }
    pos
}

/// o200k_base, seven alternatives:
/// 1. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 2. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 3. `\p{N}{1,3}`  4. ` ?[^\s\p{L}\p{N}]+[\r\n/]*`  5. `\s*[\r\n]+`  6. `\s+(?!\S)`  7. `\s+`
fn o200k_next(text: &[u8], pos: usize) -> usize {
    let first = text[pos];
    let (class, len) = class_at(text, pos);
    // Fast path: an ASCII lowercase word (alternative 1 without prefix or upper run).
    if class & LETTER != 0 {
        if let Some(end) = o200k_word_upper_then_lower(text, pos) {
            return contraction_o200k(text, end);
        }
        if let Some(end) = o200k_word_upper_run(text, pos) {
            return contraction_o200k(text, end);
        }
        unreachable!("a letter is in the upper or the lower class");
    }
    if class & NUMBER != 0 {
        return digits(text, pos + len, 2);
    }
    let prefix_allowed = !is_newline(first);
    // Alternative 1, with the optional prefix first (greedy `?`), then without it.
    if prefix_allowed {
        if let Some(end) = o200k_word_upper_then_lower(text, pos + len) {
            return contraction_o200k(text, end);
        }
    }
    if let Some(end) = o200k_word_upper_then_lower(text, pos) {
        return contraction_o200k(text, end);
    }
    // Alternative 2, same order.
    if prefix_allowed {
        if let Some(end) = o200k_word_upper_run(text, pos + len) {
            return contraction_o200k(text, end);
        }
    }
    if let Some(end) = o200k_word_upper_run(text, pos) {
        return contraction_o200k(text, end);
    }
    if class & SPACE == 0 {
        return punct_run(text, pos, true);
    }
    if first == b' ' {
        let (next_class, next_len) = class_at(text, pos + 1);
        if next_len != 0 && next_class & NOT_PUNCT == 0 {
            return punct_run(text, pos + 1, true);
        }
    }
    whitespace(text, pos, len, false)
}

/// `[U]*[W]+` at `pos` with the engine's backtracking: the upper run takes all it can, then
/// gives chars back until a lower-class char can start the lower run. End of the match or None.
#[inline(always)]
fn o200k_word_upper_then_lower(text: &[u8], pos: usize) -> Option<usize> {
    let upper_end = run_end(text, pos, UPPER_LIKE);
    let (class, _) = class_at(text, upper_end);
    if class & LOWER_LIKE != 0 {
        return Some(run_end(text, upper_end, LOWER_LIKE));
    }
    // Give back: try the lower run starting at each earlier char, latest first.
    let mut start = upper_end;
    while start > pos {
        start = prev_char_start(text, start);
        let (class, _) = class_at(text, start);
        if class & LOWER_LIKE != 0 {
            return Some(run_end(text, start, LOWER_LIKE));
        }
    }
    None
}

/// `[U]+[W]*` at `pos`. End of the match or None.
#[inline(always)]
fn o200k_word_upper_run(text: &[u8], pos: usize) -> Option<usize> {
    let upper_end = run_end(text, pos, UPPER_LIKE);
    if upper_end == pos {
        return None;
    }
    Some(run_end(text, upper_end, LOWER_LIKE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, splitter: Splitter) -> Vec<&str> {
        Pieces::new(text, splitter)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn o200k_splits_words_case_runs_and_contractions() {
        assert_eq!(split("Hello world", Splitter::O200k), ["Hello", " world"]);
        assert_eq!(split("HELLOWorld", Splitter::O200k), ["HELLOWorld"]);
        assert_eq!(split("HELLO world's", Splitter::O200k), ["HELLO", " world's"]);
        assert_eq!(split("12345", Splitter::O200k), ["123", "45"]);
        assert_eq!(split("a  b", Splitter::O200k), ["a", " ", " b"]);
        assert_eq!(split("a \n\n b", Splitter::O200k), ["a", " \n\n", " b"]);
        assert_eq!(split("x   ", Splitter::O200k), ["x", "   "]);
        assert_eq!(split("x\n  ", Splitter::O200k), ["x", "\n", "  "]);
        assert_eq!(split("path/to\n", Splitter::O200k), ["path", "/to", "\n"]);
        assert_eq!(split(" !!\n\nx", Splitter::O200k), [" !!\n\n", "x"]);
    }

    #[test]
    fn cl100k_splits_like_its_regex() {
        assert_eq!(split("Hello world", Splitter::Cl100k), ["Hello", " world"]);
        assert_eq!(split("don't", Splitter::Cl100k), ["don", "'t"]);
        assert_eq!(split("I'LL", Splitter::Cl100k), ["I", "'LL"]);
        assert_eq!(split("x\n  ", Splitter::Cl100k), ["x", "\n  "]);
        assert_eq!(split("x\n  y", Splitter::Cl100k), ["x", "\n", " ", " y"]);
        assert_eq!(split("1234", Splitter::Cl100k), ["123", "4"]);
    }
}
