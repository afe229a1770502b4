"""The provider layer: what llmthrottle knows of each provider's API (`protocol`, `headers`),
one call's lifecycle (`call`), the httpx transports that carry it (`transport`), and
`wrap`, which installs them in an SDK client; `context` attributes calls to keys."""

from .context import context
from .wrap import wrap

__all__ = ["context", "wrap"]
