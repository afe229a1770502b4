"""Builds the token-counting test and benchmark corpus from what is on the machine.

Kinds of text, each a list of documents:
- ``prose``: docstrings of the Python standard library and license texts;
- ``code``: standard-library ``.py`` files and ``.rs`` files from the cargo registry;
- ``cjk``, ``scripts``: words generated from Unicode ranges (CJK, Hangul, kana; Cyrillic, Greek,
  Arabic, Hebrew, Devanagari, Thai, ... with combining marks), mixed with spaces and punctuation;
- ``emoji``: emoji with skin tones, ZWJ sequences, flags and variation selectors, in sentences;
- ``adversarial``: long runs of one char, whitespace and digits, random bytes decoded with
  ``errors="replace"``, special-token text, apostrophe contractions, mixed newlines.

Everything is deterministic for a given seed. No network.
"""

from __future__ import annotations

import ast
import glob
import os
import random
import sys
import sysconfig
import unicodedata
from collections.abc import Iterator

KINDS = ("prose", "code", "cjk", "scripts", "emoji", "adversarial")


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    files += sorted(glob.glob(os.path.join(root, "*", "*.py")))
    return [f for f in files if "site-packages" not in f and "test" not in f]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _chunks(text: str, rng: random.Random, low: int, high: int) -> Iterator[str]:
    """Splits text into documents of low..high characters (at line breaks when possible)."""
    pos = 0
    while pos < len(text):
        size = rng.randint(low, high)
        end = text.rfind("\n", pos + size // 2, pos + size)
        end = pos + size if end <= pos else end + 1
        yield text[pos:end]
        pos = end


def prose_sources() -> Iterator[str]:
    for path in _stdlib_files():
        source = _read(path)
        if source is None:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    yield doc
    license_globs = [
        os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt"),
        "/usr/share/common-licenses/*",
    ]
    for pattern in license_globs:
        for path in sorted(glob.glob(pattern)):
            text = _read(path)
            if text:
                yield text


def code_sources() -> Iterator[str]:
    for path in _stdlib_files():
        text = _read(path)
        if text:
            yield text
    registry = os.path.expanduser("~/.cargo/registry/src")
    for path in sorted(glob.glob(os.path.join(registry, "*", "*", "src", "*.rs")))[:400]:
        text = _read(path)
        if text:
            yield text


# (start, end) code point ranges of letters in several scripts.
_SCRIPT_RANGES = [
    (0x0041, 0x005A),
    (0x0061, 0x007A),
    (0x00C0, 0x024F),  # Latin + extended
    (0x0370, 0x03FF),
    (0x0400, 0x04FF),
    (0x0530, 0x058F),  # Greek, Cyrillic, Armenian
    (0x0590, 0x05FF),
    (0x0600, 0x06FF),
    (0x0900, 0x097F),  # Hebrew, Arabic, Devanagari
    (0x0980, 0x09FF),
    (0x0B80, 0x0BFF),
    (0x0E00, 0x0E7F),  # Bengali, Tamil, Thai
    (0x10A0, 0x10FF),
    (0x1200, 0x137F),
    (0x1E00, 0x1EFF),  # Georgian, Ethiopic, Latin ext.
]
_CJK_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x3040, 0x309F),  # CJK, ext A, Hiragana
    (0x30A0, 0x30FF),
    (0xAC00, 0xD7A3),
    (0x20000, 0x2A6DF),  # Katakana, Hangul, ext B
    (0xFF01, 0xFF5E),  # full-width forms
]
_EMOJI_RANGES = [
    (0x1F300, 0x1F5FF),
    (0x1F600, 0x1F64F),
    (0x1F680, 0x1F6FF),
    (0x1F900, 0x1F9FF),
    (0x2600, 0x26FF),
    (0x2700, 0x27BF),
    (0x1FA70, 0x1FAFF),
]


def _assigned(ranges: list[tuple[int, int]]) -> list[str]:
    return [
        chr(cp)
        for start, end in ranges
        for cp in range(start, end + 1)
        if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co")
    ]


def _generated_words(rng: random.Random, alphabet: list[str], n_chars: int, cjk: bool) -> str:
    marks = [chr(cp) for cp in range(0x0300, 0x036F)]
    punct = list(",.;:!?-—()«»「」、。") + ["  ", "\n", "\n\n", "\t"]
    out: list[str] = []
    size = 0
    while size < n_chars:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        if not cjk and rng.random() < 0.1:
            word += rng.choice(marks)
        if rng.random() < 0.1:
            word = word.upper()
        sep = "" if cjk and rng.random() < 0.7 else " "
        out.append(word + (rng.choice(punct) if rng.random() < 0.15 else sep))
        size += len(word) + 1
    return "".join(out)


def _emoji_text(rng: random.Random, emoji: list[str], n_chars: int) -> str:
    tones = [chr(cp) for cp in range(0x1F3FB, 0x1F400)]
    flags = [chr(0x1F1E6 + a) + chr(0x1F1E6 + b) for a in range(26) for b in range(26)]
    words = "the cat sat on a mat and we all cheered loudly".split()
    out: list[str] = []
    size = 0
    while size < n_chars:
        roll = rng.random()
        if roll < 0.35:
            piece = rng.choice(emoji)
        elif roll < 0.45:
            piece = rng.choice(emoji) + rng.choice(tones)
        elif roll < 0.55:
            piece = rng.choice(emoji) + "\u200d" + rng.choice(emoji)
        elif roll < 0.6:
            piece = rng.choice(flags)
        elif roll < 0.65:
            piece = rng.choice(emoji) + "\ufe0f"
        else:
            piece = rng.choice(words)
        out.append(piece + (" " if rng.random() < 0.6 else ""))
        size += len(piece) + 1
    return "".join(out)


def adversarial_documents(rng: random.Random) -> list[str]:
    """Inputs aimed at the pretokenizer's edge cases and the merge's worst cases."""
    docs = [
        "a" * 100_000,
        "ab" * 30_000,
        " " * 100_000,
        "\n" * 20_000,
        " \n" * 20_000,
        "\t \r\n  \u3000\u00a0" * 3_000,
        "1" * 100_000,
        "1234567890" * 5_000,
        "é" * 20_000,
        "\u0301" * 5_000,
        "日本" * 20_000,
        "😀" * 10_000,
        "<|endoftext|><|endofprompt|><|fim_prefix|><|fim_middle|><|fim_suffix|>" * 100,
        "Hello <|endoftext|> world <|endofprompt|>",
        "don't I'LL we'Re they've he'd she'S it'ſ x'D 'll 've ' s'",
        "CamelCaseWords HTTPServer IOError iPhone ÉCOLE Ǆemal ǅungla ÀB̈C ",
        "path/to/file.rs\r\nfoo//bar\n\n\n   x  \n\t\ty\r\r\n",
        "    indented\n        more\n\n\n    back   \n",
        "x  ",
        " ",
        "",
        "\n",
        "!!!???...,,,;;;::: !!\n!!\r\n",
        "٣٤٥٦٧ ١٢٣ ½¾ ⅷⅸ ①②③ 𝟘𝟙𝟚",
    ]
    for _ in range(40):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
        docs.append(raw.decode("utf-8", errors="replace"))
    for _ in range(40):
        alphabet = " \t\n\r'sStT1a.A/é\u0301日😀\u00a0"
        docs.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))))
    return docs


def build_corpus(seed: int = 0, scale: float = 1.0) -> dict[str, list[str]]:
    """Documents by kind; ``scale`` multiplies the amount of generated and read text."""
    rng = random.Random(seed)
    limit = int(600_000 * scale)

    def take(sources: Iterator[str]) -> list[str]:
        docs: list[str] = []
        total = 0
        for text in sources:
            for doc in _chunks(text, rng, 1000, 4000):
                docs.append(doc)
                total += len(doc)
            if total >= limit:
                break
        return docs

    scripts = _assigned(_SCRIPT_RANGES)
    cjk = _assigned(_CJK_RANGES)
    emoji = _assigned(_EMOJI_RANGES)
    n_generated = max(1, int(60 * scale))
    return {
        "prose": take(prose_sources()),
        "code": take(code_sources()),
        "cjk": [_generated_words(rng, cjk, rng.randint(500, 2000), True) for _ in range(n_generated)],
        "scripts": [_generated_words(rng, scripts, rng.randint(1000, 4000), False) for _ in range(n_generated)],
        "emoji": [_emoji_text(rng, emoji, rng.randint(500, 2000)) for _ in range(n_generated)],
        "adversarial": adversarial_documents(rng),
    }


def mixed_corpus(total_bytes: int, seed: int = 0) -> list[str]:
    """About ``total_bytes`` of documents of every kind but adversarial, shuffled (for benches)."""
    corpus = build_corpus(seed, scale=total_bytes / 1_650_000)
    docs = [doc for kind in KINDS if kind != "adversarial" for doc in corpus[kind]]
    random.Random(seed).shuffle(docs)
    return docs


def every_code_point_in_context() -> Iterator[str]:
    """Every Unicode scalar value, each in several contexts, in chunks of a few thousand.

    The contexts put the char after a letter, a space, an apostrophe, a digit and an upper-case
    letter, and before letters, so any disagreement in a character class or a case fold shows.
    """
    chunk: list[str] = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        chunk.append(f"a{c}b {c}C'{c}1{c}{c}A{c}x\n")
        if len(chunk) == 2000:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


if __name__ == "__main__":  # pragma: no cover - manual inspection
    corpus = build_corpus()
    for kind, docs in corpus.items():
        print(kind, len(docs), sum(len(d.encode()) for d in docs), file=sys.stderr)
