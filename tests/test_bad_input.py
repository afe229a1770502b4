"""Every entry point meets bad input with a clear exception and no change of state."""

from __future__ import annotations

import pytest

import llmthrottle as lt


@pytest.fixture
def lim():
    return lt.Limiter({"requests": "10/min", "tokens": "1k/min", "cost_usd": {"quota": 5, "per": "day"}})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tokens": -1}, ValueError, "negative"),
        ({"tokens": 2**70}, ValueError, "too large"),
        ({"tokens": 1.5}, TypeError, "int"),
        ({"tokens": float("nan")}, TypeError, "int"),
        ({"tokens": "12"}, TypeError, "int"),
        ({"tokens": True}, TypeError, "bool"),
        ({"requests": -3}, ValueError, "negative"),
        ({"cost_usd": float("nan")}, ValueError, "finite"),
        ({"cost_usd": float("inf")}, ValueError, "finite"),
        ({"cost_usd": -0.5}, ValueError, "non-negative"),
        ({"cost_usd": 1e300}, ValueError, "too large"),
        ({"tokenz": 5}, ValueError, "unknown dimension 'tokenz'"),
        ({"max_wait": -1.0}, ValueError, "max_wait"),
        ({"max_wait": float("nan")}, ValueError, "max_wait"),
    ],
)
def test_bad_amounts(lim, kwargs, error, match):
    with pytest.raises(error, match=match):
        lim.try_acquire("k", **kwargs)
    assert all(s.used == 0 for s in lim.status("k"))


@pytest.mark.parametrize(
    "key, error, match",
    [
        ("", ValueError, "empty"),
        ("x" * 256, ValueError, "at most 255"),
        (None, TypeError, "str"),
        (42, TypeError, "str"),
        (b"bytes", TypeError, "str"),
        ([], ValueError, "at least one key"),
        (["a", 3], TypeError, "str"),
        (["a", "a"], ValueError, "twice"),
    ],
)
def test_bad_keys(lim, key, error, match):
    with pytest.raises(error, match=match):
        lim.try_acquire(key)


def test_longest_key_is_accepted(lim):
    assert lim.try_acquire("é" * 127)  # 254 bytes of UTF-8


@pytest.mark.parametrize(
    "limits, match",
    [
        ({}, "empty"),
        ({"requests": "500"}, "malformed rate"),
        ({"requests": "abc/min"}, "malformed rate"),
        ({"requests": "-5/min"}, "malformed rate"),
        ({"requests": "0/min"}, "positive"),
        ({"requests": "5/fortnight"}, "unknown unit"),
        ({"requests": "2G/s"}, "too high"),
        ({"requests": 5}, "rate string"),
        ({"requests": {"rate": "5/s", "burst": 0}}, "burst"),
        ({"requests": {"rate": "5/s", "burst": "x"}}, "burst"),
        ({"requests": {"rate": "5/s", "bust": 1}}, "expected"),
        ({"requests": {"rate": "5/s", "refund": "all"}}, "refund must be 'undrained' or 'whole'"),
        ({"requests": {"rate": "5/s", "refund": ["whole"]}}, "refund must be"),
        ({"requests": []}, "empty list"),
        ({"concurrency": 0}, "positive int"),
        ({"concurrency": "5"}, "positive int"),
        ({"concurrency": True}, "positive int"),
        ({"to kens": "5/s"}, "dimension name"),
        ({"tokens": {"quota": 5, "per": "fortnight"}}, "period"),
        ({"tokens": {"quota": 0, "per": "day"}}, "quota"),
        ({"tokens": {"quota": -1, "per": "day"}}, "negative"),
        ({7: "5/s"}, "must be a str"),
    ],
)
def test_bad_limits(limits, match):
    with pytest.raises(lt.ConfigError, match=match):
        lt.Limiter(limits)


def test_bad_rules():
    with pytest.raises(lt.ConfigError, match="exactly one"):
        lt.Limiter({"requests": "1/s"}, rules={"*": {"requests": "1/s"}})
    with pytest.raises(lt.ConfigError, match="exactly one"):
        lt.Limiter()
    with pytest.raises(lt.ConfigError, match="pattern"):
        lt.Limiter(rules={"": {"requests": "1/s"}})
    with pytest.raises(lt.ConfigError, match="mapping"):
        lt.Limiter(rules={"user:*": "1/s"})


def test_bad_set_limits_keeps_the_old_ones(lim):
    with pytest.raises(lt.ConfigError):
        lim.set_limits({"requests": "nonsense"})
    assert lim.dimensions == ["requests", "tokens", "cost_usd"]
    assert lim.try_acquire("k")


def test_bad_commit_usage(lim):
    r = lim.try_acquire("k", tokens=10)
    with pytest.raises(ValueError, match="negative"):
        r.commit(tokens=-1)
    with pytest.raises(ValueError, match="unknown dimension"):
        r.commit(nope=1)
    assert not r.settled  # a rejected commit leaves the reservation open
    r.commit(tokens=5)


def test_bad_timeout(lim):
    for timeout in (-1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="timeout"):
            lim.acquire("k", timeout=timeout)


def test_bad_state_and_clock():
    with pytest.raises(TypeError, match="state"):
        lt.Limiter({"requests": "1/s"}, state=object())
    with pytest.raises(TypeError):
        lt.Limiter({"requests": "1/s"}, clock=object())


@pytest.mark.parametrize(
    "key, amounts, error, match",
    [
        ("k", {"tokens": -5}, ValueError, "negative"),
        ("k", {"tokenz": 5}, ValueError, "unknown dimension"),
        ("k", {"cost_usd": float("nan")}, ValueError, "finite"),
        ("", {"tokens": 5}, ValueError, "empty"),
        (["k", 3], {"tokens": 5}, TypeError, "str"),
    ],
)
def test_bad_charges_change_nothing(lim, key, amounts, error, match):
    with pytest.raises(error, match=match):
        lim.charge(key, **amounts)
    assert all(s.used == 0 for s in lim.status("k"))
    lim.charge("k", tokens=5)
    assert lim.status("k")[1].used == 5


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((), {}, "missing 1 required positional argument: 'key'"),
        (("k", 1, 2, 3), {}, "3 positional arguments"),
        (("k", 1), {"requests": 1}, "multiple values for argument 'requests'"),
        (("k", 1, 2), {"tokens": 2}, "multiple values for argument 'tokens'"),
        (("k",), {"max_wait": "1"}, "str"),
    ],
)
def test_bad_try_acquire_arguments(lim, args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        lim.try_acquire(*args, **kwargs)
    assert all(s.used == 0 for s in lim.status("k"))


def test_try_acquire_arguments_by_position_keyword_and_default(lim):
    """Positional `requests`/`tokens`, their keywords, None as "not given", an int max_wait."""
    assert lim.try_acquire("a", 2, 10).reserved == {"requests": 2, "tokens": 10}
    assert lim.try_acquire("b", requests=3, tokens=4).reserved == {"requests": 3, "tokens": 4}
    assert lim.try_acquire("c", None, None, max_wait=0).reserved == {"requests": 1}
    assert lim.try_acquire("d", tokens=None, cost_usd=0.5, max_wait=1).reserved == {"requests": 1, "cost_usd": 0.5}
    assert lim.try_acquire("e", 1, tokens=7).reserved == {"requests": 1, "tokens": 7}


def test_try_acquire_signature_is_introspectable():
    import inspect

    sig = inspect.signature(lt.Limiter.try_acquire)
    assert str(sig) == "(self, key, /, requests=None, tokens=None, *, max_wait=0.0, **amounts)"
    assert "Decides at once" in (lt.Limiter.try_acquire.__doc__ or "")


def test_too_many_keys_in_one_call(lim):
    keys = [f"k{i}" for i in range(65_536)]
    with pytest.raises(ValueError, match="at most 65535"):
        lim.try_acquire(keys)
    assert all(s.used == 0 for s in lim.status("k0"))


@pytest.mark.parametrize("amount", [0, 2, 5])
def test_a_concurrency_amount_other_than_one_is_refused_not_read_as_one(amount: int) -> None:
    lim = lt.Limiter({"concurrency": 3})
    with pytest.raises(ValueError, match=f"concurrency={amount}: .*one slot"):
        lim.try_acquire("k", concurrency=amount)
    assert all(s.used == 0 for s in lim.status("k"))
    assert lim.try_acquire("k", concurrency=1)
