"""Type stubs of the native module `llmthrottle._native` (built from crates/llmthrottle-py)."""

from collections.abc import Sequence
from typing import Any, final

class LlmthrottleError(Exception): ...
class RateLimited(LlmthrottleError):
    retry_after: float
    limited_by: str | None
    key: str | None

class ExceedsCapacity(ValueError):
    key: str
    dimension: str
    requested: int | float
    capacity: int | float

class BudgetExceeded(LlmthrottleError):
    budget: Any
    key: str | None
    retry_after: float
    downgrade_to: str | None

class ConfigError(ValueError): ...
class StateError(LlmthrottleError): ...

# --- limiter (crates/llmthrottle-py/src/limiter.rs) ---

@final
class InProcessState:
    """Limiter state kept in this process's memory (the default)."""

    def __new__(cls) -> InProcessState: ...
    def __len__(self) -> int: ...

@final
class FakeClock:
    """A clock that moves only when told to, for deterministic tests."""

    def __new__(cls, start: float = 1.0, wall: float = 1767225600.0) -> FakeClock: ...
    def advance(self, seconds: float) -> None: ...
    @property
    def monotonic(self) -> float: ...
    @property
    def wall(self) -> float: ...

class Decision:
    """What a limiter decided. Truthy when the call was admitted."""

    @property
    def allowed(self) -> bool: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def delay(self) -> float: ...
    @property
    def reset_after(self) -> float: ...
    @property
    def limited_by(self) -> str | None: ...
    @property
    def limited_key(self) -> str | None: ...
    @property
    def remaining(self) -> dict[str, int | float]: ...
    def __bool__(self) -> bool: ...

@final
class Reservation(Decision):
    """An admitted call: commit(**usage) reconciles it, cancel() refunds it."""

    def commit(self, **usage: int | float) -> None: ...
    def cancel(self) -> None: ...
    @property
    def settled(self) -> bool: ...
    @property
    def reserved(self) -> dict[str, int | float]: ...
    def __enter__(self) -> Reservation: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool: ...

class Limiter:
    def __new__(
        cls,
        rules: Any,
        *,
        namespace: str = "default",
        state: Any | None = None,
        clock: FakeClock | None = None,
    ) -> Limiter: ...
    def try_acquire(
        self,
        key: str | Sequence[str],
        /,
        requests: int | None = None,
        tokens: int | None = None,
        *,
        max_wait: float = 0.0,
        **amounts: int | float,
    ) -> Decision: ...
    def peek(
        self,
        key: str | Sequence[str],
        /,
        requests: int | None = None,
        tokens: int | None = None,
        **amounts: int | float,
    ) -> Decision: ...
    def status(self, key: str) -> list[tuple[str, str, int | float, int | float, float, int | float]]: ...
    def _set_rules(self, rules: Any, namespace: str) -> None: ...
    @property
    def dimensions(self) -> list[str]: ...

def key_matches(pattern: str, key: str) -> bool: ...
def parse_duration(text: str) -> float: ...

# --- end limiter ---

# --- tokens (crates/llmthrottle-py/src/tokens.rs) ---

from collections.abc import Iterable

@final
class Encoding:
    """An exact tokenizer ("o200k_base", "cl100k_base"), identical to tiktoken."""

    def __new__(cls, name: str) -> Encoding: ...
    @property
    def name(self) -> str: ...
    @property
    def n_vocab(self) -> int: ...
    def count(self, text: str | bytes) -> int: ...
    def count_till_limit(self, text: str | bytes, limit: int) -> int | None: ...
    def count_batch(self, texts: Iterable[str | bytes]) -> list[int]: ...
    def encode(self, text: str | bytes) -> list[int]: ...
    def decode(self, tokens: Sequence[int]) -> str: ...
    def estimate(self, text: str | bytes) -> int: ...

def _estimator_features(text: str | bytes) -> list[tuple[str, int]]: ...

# --- end tokens ---
