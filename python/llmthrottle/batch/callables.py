"""A job's own request builder and reply parser, named `package.module:function` (`--build`,
`--parse`), so that the job's spec (job.json) holds them and `resume` finds them again without
being told. The module is imported from `sys.path` (PYTHONPATH) when the job runs; a name that
does not import, or that names something not callable, is a `ConfigError` before anything is
sent.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from .._native import ConfigError

__all__ = ["check_name", "load"]

_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def check_name(what: str, name: Any) -> None:
    """Raises `ConfigError` unless `name` reads `package.module:function`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{what} must name a function as package.module:function, got {name!r}")


def load(what: str, name: str) -> Callable[..., Any]:
    """The callable `name` (`package.module:function`, or `module:Class.method`) names."""
    check_name(what, name)
    module_name, _, path = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{what} {name!r}: cannot import {module_name!r} ({error}); is it on PYTHONPATH?") from None
    except Exception as error:  # the module itself failed while importing
        raise ConfigError(
            f"{what} {name!r}: importing {module_name!r} raised {type(error).__name__}: {error}"
        ) from None
    for part in path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"{what} {name!r}: {module_name!r} has no attribute {path!r}") from None
    if not callable(found):
        raise ConfigError(f"{what} {name!r} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]
