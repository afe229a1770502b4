//! Generates the two build-time tables of the crate into `OUT_DIR`:
//!
//! - `<encoding>.vocab`: every token's bytes in rank order, taken from the vocabularies that the
//!   `tiktoken-rs` crate ships (so nothing is downloaded and nothing is vendored here). Format:
//!   `u32 LE count`, then `count` × `u16 LE length` (0 = no token has that rank), then the bytes.
//! - `unicode_classes.rs`: a two-stage table of per-code-point class bits for the pretokenizers,
//!   computed with `regex-syntax` from the very `\p{..}`/`\s` classes of tiktoken's regexes, so the
//!   hand-written scanners classify characters exactly as the regex engine does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out_dir);
    write_vocab(out, "o200k_base", tiktoken_rs::o200k_base().expect("o200k_base loads"));
    write_vocab(
        out,
        "cl100k_base",
        tiktoken_rs::cl100k_base().expect("cl100k_base loads"),
    );
    write_unicode_classes(out);
    println!("cargo::rerun-if-changed=build.rs");
}

fn write_vocab(out: &Path, name: &str, bpe: tiktoken_rs::CoreBPE) {
    let specials: Vec<&str> = bpe.special_tokens().into_iter().collect();
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut misses = 0;
    let mut rank: u32 = 0;
    // Ranks are dense from 0 up to a few holes before the special tokens; stop after a long gap.
    while misses < 1024 {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !specials.iter().any(|s| s.as_bytes() == bytes.as_slice()) => {
                tokens.resize(rank as usize, Vec::new());
                tokens.push(bytes);
                misses = 0;
            }
            _ => misses += 1,
        }
        rank += 1;
    }
    let mut blob = Vec::new();
    blob.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for token in &tokens {
        blob.extend_from_slice(&u16::try_from(token.len()).expect("short token").to_le_bytes());
    }
    for token in &tokens {
        blob.extend_from_slice(token);
    }
    std::fs::write(out.join(format!("{name}.vocab")), blob).expect("write vocab");
}

/// Bit values; keep in sync with `src/unicode.rs`.
const LETTER: u8 = 1; // \p{L}
const NUMBER: u8 = 2; // \p{N}
const SPACE: u8 = 4; // \s
const UPPER_LIKE: u8 = 8; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
const LOWER_LIKE: u8 = 16; // [\p{Ll}\p{Lm}\p{Lo}\p{M}]

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new().parse(pattern).expect("valid class");
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

fn write_unicode_classes(out: &Path) {
    let mut flags = vec![0u8; 0x11_0000];
    for (pattern, bit) in [
        (r"\p{L}", LETTER),
        (r"\p{N}", NUMBER),
        (r"\s", SPACE),
        (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPER_LIKE),
        (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWER_LIKE),
    ] {
        for (start, end) in class_ranges(pattern) {
            for cp in start..=end {
                flags[cp as usize] |= bit;
            }
        }
    }
    // Two stages: 256-code-point blocks, deduplicated.
    let mut block_ids: HashMap<&[u8], u16> = HashMap::new();
    let mut blocks: Vec<&[u8]> = Vec::new();
    let mut stage1: Vec<u16> = Vec::new();
    for block in flags.chunks(256) {
        let next = blocks.len() as u16;
        let id = *block_ids.entry(block).or_insert_with(|| {
            blocks.push(block);
            next
        });
        stage1.push(id);
    }
    let mut src = String::new();
    writeln!(src, "pub(crate) static STAGE1: [u16; {}] = {:?};", stage1.len(), stage1).unwrap();
    let stage2: Vec<u8> = blocks.concat();
    writeln!(src, "pub(crate) static STAGE2: [u8; {}] = {:?};", stage2.len(), stage2).unwrap();
    // Case-insensitive contraction letters, as regex-syntax folds them (`s` also matches `ſ`).
    for letter in ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'] {
        let chars: Vec<char> = class_ranges(&format!("(?i:{letter})"))
            .into_iter()
            .flat_map(|(a, b)| (a..=b).filter_map(char::from_u32))
            .collect();
        writeln!(
            src,
            "pub(crate) const FOLD_{}: &[char] = &{:?};",
            letter.to_ascii_uppercase(),
            chars
        )
        .unwrap();
    }
    std::fs::write(out.join("unicode_classes.rs"), src).expect("write unicode classes");
}
