"""The provider layer: what llmthrottle knows of each provider's API (`protocol`, `headers`),
one call's lifecycle (`call`), the httpx transports that carry it (`transport`), and
`sdk.wrap`, which installs them in an SDK client; `attribution.context` attributes calls to keys,
`reports.calls` tells the caller what each call cost, `size` caps a request's tokens."""

from .attribution import context
from .cache import ResponseCache
from .reports import CallReport, calls
from .sdk import wrap
from .size import RequestTooLarge

__all__ = ["CallReport", "RequestTooLarge", "ResponseCache", "calls", "context", "wrap"]
