"""The sidecar client: `lt.Limiter(limits, state=lt.Sidecar(path))` decides through a running
`llmthrottle serve` with the same API as the in-process limiter (sync and async).

Modules: `connection` (blocking pool and pipelined asyncio connection over the binary protocol),
`decision` (decision and reservation objects), `limiter` (`Sidecar`, `SidecarLimiter`).
"""

from .connection import SidecarUnavailable
from .decision import OpenReservation, SidecarDecision, SidecarReservation
from .limiter import Sidecar, SidecarLimiter

__all__ = [
    "Sidecar",
    "SidecarLimiter",
    "SidecarUnavailable",
    "SidecarDecision",
    "SidecarReservation",
    "OpenReservation",
]
