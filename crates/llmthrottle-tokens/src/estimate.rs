//! The fast estimator: a token count from byte-class statistics, no vocabulary walk.
//!
//! One pass classifies the text sixteen bytes at a time (SSE2 compares into bit masks, then
//! popcounts; a scalar loop for the tail and other targets) and counts the features below; the estimate is their dot product with per-encoding
//! coefficients fitted by least squares on relative error over the project's corpus
//! (`benches/bench_tokens.py --fit` prints them; tests/tokens_corpus.py builds the corpus).
//! Features that BPE cares about: words (runs of letters), their length and capitals, digit runs
//! (split in threes), space runs (indentation merges), punctuation runs, and non-ASCII
//! characters by UTF-8 length, with the CJK block (3-byte leads E3..E9) apart from the rest.

/// Names of the features, in order.
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "ascii_letters",
    "letter_runs",
    "uppercase",
    "digits",
    "digit_runs",
    "spaces",
    "space_runs",
    "newlines",
    "ascii_other",
    "ascii_other_runs",
    "chars_2byte",
    "chars_3byte_cjk",
    "chars_3byte_other",
    "chars_4byte",
    "non_ascii_runs",
    "bias",
];
/// Number of features.
pub const FEATURES: usize = 16;

/// Per-feature token weights of one encoding.
#[derive(Debug, Clone, Copy)]
pub struct Coefficients(pub [f64; FEATURES]);

// Fitted by `python benches/bench_tokens.py --fit` (least squares on relative error, 1-4 KB
// documents of prose, code, CJK, other scripts and emoji).
pub(crate) static O200K_COEFFICIENTS: Coefficients = Coefficients([
    0.03899, 0.22817, 0.14152, 0.23448, 0.70767, 0.03026, 0.66678, 0.60376, 0.10973, 0.80367, 1.62572, 4.75202,
    1.74345, 2.42990, -0.61855, -0.18662,
]);
pub(crate) static CL100K_COEFFICIENTS: Coefficients = Coefficients([
    0.04167, 0.22842, 0.10518, 0.25733, 0.68494, 0.02761, 0.66473, 0.55972, 0.12017, 0.78647, 2.13857, 3.99428,
    2.35328, 3.14046, -0.93574, -0.17663,
]);

/// Bit masks (bit i = byte i of a block of up to 64) of the byte classes the features count.
#[derive(Clone, Copy, Default)]
struct Masks {
    letters: u64,
    upper: u64,
    digits: u64,
    spaces: u64,
    newlines: u64,
    non_ascii: u64,
    lead2: u64,
    lead3: u64,
    lead4: u64,
    cjk: u64,
}

impl Masks {
    /// Appends `other`'s bits above the first `shift` bits.
    #[inline(always)]
    fn merge(&mut self, other: Masks, shift: u32) {
        self.letters |= other.letters << shift;
        self.upper |= other.upper << shift;
        self.digits |= other.digits << shift;
        self.spaces |= other.spaces << shift;
        self.newlines |= other.newlines << shift;
        self.non_ascii |= other.non_ascii << shift;
        self.lead2 |= other.lead2 << shift;
        self.lead3 |= other.lead3 << shift;
        self.lead4 |= other.lead4 << shift;
        self.cjk |= other.cjk << shift;
    }
}

/// Accumulates the features of consecutive blocks; run starts look at the previous block.
#[derive(Default)]
struct Counter {
    counts: [u64; FEATURES],
    previous: [bool; 4], // last byte was: letter, digit, space, non-ASCII
    previous_other: bool,
}

impl Counter {
    #[inline(always)]
    fn add(&mut self, m: Masks, valid: u64, width: u32) {
        let pop = |x: u64| x.count_ones() as u64;
        let starts = |x: u64, previous: bool| x & !((x << 1) | previous as u64);
        let other = valid & !(m.letters | m.digits | m.spaces | m.newlines | m.non_ascii);
        let c = &mut self.counts;
        c[0] += pop(m.letters);
        c[1] += pop(starts(m.letters, self.previous[0]));
        c[2] += pop(m.upper);
        c[3] += pop(m.digits);
        c[4] += pop(starts(m.digits, self.previous[1]));
        c[5] += pop(m.spaces);
        c[6] += pop(starts(m.spaces, self.previous[2]));
        c[7] += pop(m.newlines);
        c[8] += pop(other);
        c[9] += pop(starts(other, self.previous_other));
        c[10] += pop(m.lead2) - pop(m.lead3);
        c[11] += pop(m.cjk);
        c[12] += pop(m.lead3) - pop(m.lead4) - pop(m.cjk);
        c[13] += pop(m.lead4);
        c[14] += pop(starts(m.non_ascii, self.previous[3]));
        let last = 1 << (width - 1);
        self.previous = [
            m.letters & last != 0,
            m.digits & last != 0,
            m.spaces & last != 0,
            m.non_ascii & last != 0,
        ];
        self.previous_other = other & last != 0;
    }
}

/// Masks of up to 64 bytes, one byte at a time (the tail, and targets without SSE2).
fn masks_scalar(bytes: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (i, &b) in bytes.iter().enumerate() {
        let bit = 1u64 << i;
        let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut m.letters, b.is_ascii_alphabetic());
        set(&mut m.upper, b.is_ascii_uppercase());
        set(&mut m.digits, b.is_ascii_digit());
        set(&mut m.spaces, b == b' ');
        set(&mut m.newlines, b == b'\n');
        set(&mut m.non_ascii, b >= 0x80);
        set(&mut m.lead2, b >= 0xC0);
        set(&mut m.lead3, b >= 0xE0);
        set(&mut m.lead4, b >= 0xF0);
        set(&mut m.cjk, (0xE3..=0xE9).contains(&b));
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks_sse2(block: &[u8; 16]) -> Masks {
    // (bits 0..16 only; `features` merges four blocks)
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; the load is unaligned and in bounds.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        // Bytes in [low, low + count): subtract, then unsigned min detects <= count - 1.
        let in_range = |x: __m128i, low: u8, count: u8| -> u64 {
            let shifted = _mm_sub_epi8(x, _mm_set1_epi8(low as i8));
            let capped = _mm_min_epu8(shifted, _mm_set1_epi8((count - 1) as i8));
            _mm_movemask_epi8(_mm_cmpeq_epi8(shifted, capped)) as u16 as u64
        };
        let equal = |x: __m128i, byte: u8| -> u64 {
            _mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(byte as i8))) as u16 as u64
        };
        let high_bits = |x: __m128i, shift: i32| -> u64 {
            let shifted = match shift {
                0 => x,
                1 => _mm_slli_epi16(x, 1),
                2 => _mm_slli_epi16(x, 2),
                _ => _mm_slli_epi16(x, 3),
            };
            _mm_movemask_epi8(shifted) as u16 as u64
        };
        let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
        Masks {
            letters: in_range(folded, b'a', 26),
            upper: in_range(v, b'A', 26),
            digits: in_range(v, b'0', 10),
            spaces: equal(v, b' '),
            newlines: equal(v, b'\n'),
            non_ascii: high_bits(v, 0),
            // UTF-8 leads are 110xxxxx, 1110xxxx, 11110xxx: test bits 6, 5 and 4 by shifting
            // them into the sign position that movemask reads (shifts within 16-bit lanes
            // never move a bit into a byte's own bit 7 from elsewhere).
            lead2: high_bits(v, 0) & high_bits(v, 1),
            lead3: high_bits(v, 0) & high_bits(v, 1) & high_bits(v, 2),
            lead4: high_bits(v, 0) & high_bits(v, 1) & high_bits(v, 2) & high_bits(v, 3),
            cjk: in_range(v, 0xE3, 7),
        }
    }
}

/// The feature counts of `text`.
pub fn features(text: &str) -> [u64; FEATURES] {
    let bytes = text.as_bytes();
    let mut counter = Counter::default();
    // 64 bytes per step: four 16-byte compares merged, so each feature costs one popcount.
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        #[cfg(target_arch = "x86_64")]
        let masks = {
            let mut masks = Masks::default();
            for (i, quarter) in block.chunks_exact(16).enumerate() {
                masks.merge(masks_sse2(quarter.try_into().expect("16 bytes")), 16 * i as u32);
            }
            masks
        };
        #[cfg(not(target_arch = "x86_64"))]
        let masks = masks_scalar(block);
        counter.add(masks, u64::MAX, 64);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        counter.add(masks_scalar(rest), (1u64 << rest.len()) - 1, rest.len() as u32);
    }
    counter.counts[FEATURES - 1] = 1;
    counter.counts
}

/// The estimate under `coefficients`, rounded, never negative.
pub fn estimate_with(coefficients: &Coefficients, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let features = features(text);
    let total: f64 = features
        .iter()
        .zip(coefficients.0.iter())
        .map(|(&f, &c)| f as f64 * c)
        .sum();
    total.round().max(1.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The features from a plain per-char walk.
    fn reference(text: &str) -> [u64; FEATURES] {
        let mut counts = [0u64; FEATURES];
        // 0 letter, 1 digit, 2 space, 3 non-ASCII, 4 other ASCII, 5 newline
        let kind = |c: char| match c {
            c if c.is_ascii_alphabetic() => 0,
            c if c.is_ascii_digit() => 1,
            ' ' => 2,
            '\n' => 5,
            c if !c.is_ascii() => 3,
            _ => 4,
        };
        let mut previous = None;
        for c in text.chars() {
            let k = kind(c);
            let starts = (previous != Some(k)) as u64;
            match k {
                0 => {
                    counts[0] += 1;
                    counts[1] += starts;
                    counts[2] += c.is_ascii_uppercase() as u64;
                }
                1 => {
                    counts[3] += 1;
                    counts[4] += starts;
                }
                2 => {
                    counts[5] += 1;
                    counts[6] += starts;
                }
                5 => counts[7] += 1,
                4 => {
                    counts[8] += 1;
                    counts[9] += starts;
                }
                _ => {
                    counts[14] += starts;
                    let lead = c.to_string().as_bytes()[0];
                    match c.len_utf8() {
                        2 => counts[10] += 1,
                        3 if (0xE3..=0xE9).contains(&lead) => counts[11] += 1,
                        3 => counts[12] += 1,
                        _ => counts[13] += 1,
                    }
                }
            }
            previous = Some(k);
        }
        counts[FEATURES - 1] = 1;
        counts
    }

    #[test]
    fn simd_features_match_a_per_char_reference() {
        for text in [
            "",
            "Hello, world! 123 4567",
            "    indented\n\tcode(x) # 99\n",
            "日本語のテキスト、한국어 текст ελληνικά 😀👍🏽 🇫🇷",
            "a1 b22  c333   ~~~`[]{}@@\u{7f}\u{0}",
            "exactly8",
            "ends with multi-byte é",
            "sixteen bytes!!!seventeen bytes!! and a run  of  spaces across  the 16-byte line",
            &"Sixty-four bytes and more: ünïcödé, 日本語, 😀, digits 1234 & runs   ;;; ".repeat(5),
            "日本語日本語日本語日本語日本語日本語 mixed ASCII 1234567890123456789",
        ] {
            assert_eq!(features(text), reference(text), "{text:?}");
        }
    }
}
