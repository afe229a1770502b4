"""The provider layer: what llmthrottle knows of each provider's API (`protocol`, `headers`),
one call's lifecycle (`call`), the httpx transports that carry it (`transport`), and
`sdk.wrap`, which installs them in an SDK client; `attribution.context` attributes calls to keys."""

from .attribution import context
from .sdk import wrap

__all__ = ["context", "wrap"]
