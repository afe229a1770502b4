"""Exact token counting is identical to tiktoken; the Python API's contract and its errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokens_corpus import KINDS, build_corpus, every_code_point_in_context
from tokens_reference import assert_parallel_counting_agrees, reference_encode

import llmthrottle as lt
from llmthrottle import ConfigError, Encoding

ENCODINGS = ["o200k_base", "cl100k_base"]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return build_corpus(seed=0)


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_corpus_document_encodes_exactly_like_tiktoken(
    corpus: dict[str, list[str]], name: str, kind: str
) -> None:
    enc = Encoding(name)
    mismatches = [doc for doc in corpus[kind] if enc.encode(doc) != reference_encode(name, doc)]
    assert not mismatches, f"{len(mismatches)} {kind} documents differ, e.g. {mismatches[0][:300]!r}"
    counts = enc.count_batch(corpus[kind])
    assert counts == [len(reference_encode(name, doc)) for doc in corpus[kind]]


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_code_point_in_every_context_matches_tiktoken(name: str) -> None:
    enc = Encoding(name)
    for chunk in every_code_point_in_context():
        if enc.encode(chunk) != reference_encode(name, chunk):
            bad = next(
                line for line in chunk.splitlines(keepends=True) if enc.encode(line) != reference_encode(name, line)
            )
            pytest.fail(f"{name} differs from tiktoken on {bad!r} (U+{ord(bad[1]):04X})")


# Characters that exercise every branch of the pretokenizers: case classes, marks, digits of
# several scripts, contractions (with the long s that folds to 's'), whitespace and newlines.
_TRICKY = st.sampled_from(
    list("aZ'sStTdDmMlLrReEvV1 \t\r\n\u00a0\u3000/.,!?-_")
    + ["\u017f", "\u0301", "\u01c5", "\u02b0", "日", "本", "한", "😀", "\u200d", "\ufe0f", "٣", "½"]
)


@pytest.mark.parametrize("name", ENCODINGS)
@settings(max_examples=400, deadline=None)
@given(text=st.text())
def test_random_unicode_matches_tiktoken(name: str, text: str) -> None:
    assert Encoding(name).encode(text) == reference_encode(name, text)


@pytest.mark.parametrize("name", ENCODINGS)
@settings(max_examples=600, deadline=None)
@given(text=st.text(alphabet=_TRICKY, max_size=60))
def test_random_tricky_text_matches_tiktoken(name: str, text: str) -> None:
    enc = Encoding(name)
    tokens = enc.encode(text)
    assert tokens == reference_encode(name, text)
    assert enc.count(text) == len(tokens)
    assert enc.decode(tokens) == text


@pytest.mark.parametrize("name", ENCODINGS)
def test_special_token_text_is_ordinary_text(name: str) -> None:
    enc = Encoding(name)
    text = "<|endoftext|> and <|endofprompt|>"
    assert enc.encode(text) == reference_encode(name, text)
    assert len(enc.encode("<|endoftext|>")) > 1


def test_count_till_limit_returns_the_count_or_none() -> None:
    enc = Encoding("o200k_base")
    text = "The quick brown fox jumps over the lazy dog. " * 100
    n = enc.count(text)
    assert enc.count_till_limit(text, n) == n
    assert enc.count_till_limit(text, n - 1) is None
    assert enc.count_till_limit(text, 0) is None
    assert enc.count_till_limit("", 0) == 0


def test_count_tokens_maps_models_to_encodings() -> None:
    text = "Größe 日本語 🎉 hello world"
    o200k = len(reference_encode("o200k_base", text))
    cl100k = len(reference_encode("cl100k_base", text))
    assert o200k != cl100k
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-08-06",
        "gpt-4.1",
        "gpt-4.1-nano",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "openai/gpt-4o",
    ]:
        assert lt.count_tokens(text, model=model) == o200k, model
    for model in [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-4-0613",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0125",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ]:
        assert lt.count_tokens(text, model=model) == cl100k, model
    assert lt.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert lt.count_tokens(text, encoding="cl100k_base") == cl100k


def test_unknown_model_is_an_error_unless_a_fallback_is_named() -> None:
    with pytest.raises(ConfigError, match="claude-3-5-sonnet"):
        lt.count_tokens("hi", model="claude-3-5-sonnet")
    assert lt.count_tokens("hello world", model="claude-3-5-sonnet", fallback="o200k_base") == 2
    with pytest.raises(ConfigError, match="p50k_base"):
        lt.count_tokens("hi", model="mystery", fallback="p50k_base")
    with pytest.raises(TypeError):
        lt.count_tokens("hi")
    with pytest.raises(TypeError):
        lt.count_tokens("hi", model="gpt-4o", encoding="o200k_base")


def test_unknown_encoding_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="o200k_base"):
        Encoding("p50k_base")
    assert isinstance(ConfigError("x"), ValueError)


def test_bytes_are_utf8_and_invalid_utf8_is_a_clear_error() -> None:
    enc = Encoding("o200k_base")
    assert enc.count("héllo".encode()) == enc.count("héllo")
    with pytest.raises(UnicodeDecodeError, match="utf-8"):
        enc.count(b"abc\xff\xfe")
    with pytest.raises(ValueError):  # UnicodeDecodeError is a ValueError
        enc.encode(b"\xc3")


@pytest.mark.parametrize("bad", [None, 3, 1.5, ["a"], object()])
def test_non_text_input_is_a_type_error(bad: object) -> None:
    enc = Encoding("cl100k_base")
    with pytest.raises(TypeError, match="str or bytes"):
        enc.count(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lt.count_tokens(bad, model="gpt-4o")  # type: ignore[arg-type]


def test_count_batch_rejects_a_single_string_and_names_a_bad_item() -> None:
    enc = Encoding("o200k_base")
    with pytest.raises(TypeError, match="sequence"):
        enc.count_batch("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.count_batch(["ok", 5])  # type: ignore[list-item]
    assert enc.count_batch([]) == []
    assert enc.count_batch(iter(["a b", b"c"])) == [2, 1]


def test_lone_surrogates_are_repaired_as_tiktoken_repairs_them() -> None:
    enc = Encoding("o200k_base")
    for text in ["a\ud800b", "\udfff", "x\ud83d\ude00y"]:
        assert enc.encode(text) == reference_encode("o200k_base", text), repr(text)


def test_decode_rejects_unknown_token_ids() -> None:
    enc = Encoding("o200k_base")
    assert enc.decode([199999]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="300000"):
        enc.decode([300000])
    with pytest.raises(OverflowError):
        enc.decode([-1])


def test_encoding_objects_describe_themselves() -> None:
    enc = Encoding("o200k_base")
    assert enc.name == "o200k_base"
    assert repr(enc) == "Encoding('o200k_base')"
    assert enc.n_vocab == 200019
    assert Encoding("cl100k_base").n_vocab == 100277


def test_counting_runs_in_parallel_threads_with_the_same_answer() -> None:
    assert_parallel_counting_agrees(Encoding("o200k_base"), "Parallel counting releases the GIL. " * 2000)


def test_estimate_is_close_to_the_exact_count_on_ordinary_text() -> None:
    enc = Encoding("o200k_base")
    text = "The quick brown fox jumps over the lazy dog, again and again. " * 40
    exact = enc.count(text)
    assert abs(enc.estimate(text) - exact) <= 0.25 * exact
    assert lt.count_tokens(text, model="gpt-4o", exact=False) == enc.estimate(text)
    assert enc.estimate("") == 0
    assert enc.estimate("a") >= 1
