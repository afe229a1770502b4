"""Rules that choose a request's model alias from the request itself: simple questions to a
cheap model, hard ones to a frontier model.

    [[routes]]                    # tried in order; the first whose conditions all hold decides
    model = "auto"                # the model name callers send
    alias = "cheap"               # the alias the request then goes to
    max_input_tokens = 500        # conditions, all optional: the input as the provider counts it,
    min_input_tokens = 0
    tools = false                 # whether the request offers tools
    header = "x-task: summary"    # a request header and its value
    [[routes]]
    model = "auto"
    alias = "frontier"            # no conditions: the fallback

A request naming a model no rule matches is routed by that name, as an alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._native import ConfigError

__all__ = ["RouteRule", "choose_alias", "parse_rules"]

_KEYS = ("model", "alias", "max_input_tokens", "min_input_tokens", "tools", "header")


@dataclass(frozen=True)
class RouteRule:
    model: str
    alias: str
    max_input_tokens: int | None = None
    min_input_tokens: int | None = None
    tools: bool | None = None
    header: tuple[str, str] | None = None

    def needs_tokens(self) -> bool:
        return self.max_input_tokens is not None or self.min_input_tokens is not None


def parse_rules(entries: Any, aliases: Mapping[str, Any], error: Any) -> list[RouteRule]:
    """`[[routes]]` entries, each checked (`error(keys, message)` makes the ConfigError)."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise error(("routes",), 'must be an array of tables: [[routes]] model = "auto" alias = "cheap" ...')
    rules = []
    for index, entry in enumerate(entries):
        keys = ("routes", str(index))
        unknown = set(entry) - set(_KEYS)
        if unknown:
            raise error(keys, f"unknown keys {sorted(unknown)}; expected {list(_KEYS)}")
        model, alias = entry.get("model"), entry.get("alias")
        if not isinstance(model, str) or not model or not isinstance(alias, str) or alias not in aliases:
            raise error(keys, f"needs model = <the name callers send> and alias = one of {sorted(aliases)}")
        bounds = {}
        for name in ("max_input_tokens", "min_input_tokens"):
            value = entry.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise error((*keys, name), f"must be a non-negative integer, not {value!r}")
            bounds[name] = value
        tools = entry.get("tools")
        if tools is not None and not isinstance(tools, bool):
            raise error((*keys, "tools"), "must be true or false")
        header = None
        if "header" in entry:
            text = entry["header"]
            name, _, value = text.partition(":") if isinstance(text, str) else ("", "", "")
            if not name.strip() or not value.strip():
                raise error((*keys, "header"), f'must be "name: value", not {text!r}')
            header = (name.strip().lower(), value.strip())
        rules.append(RouteRule(model, alias, bounds["max_input_tokens"], bounds["min_input_tokens"], tools, header))
    return rules


def choose_alias(rules: list[RouteRule], body: Mapping[str, Any], headers: Mapping[str, str], family: Any) -> str:
    """The alias `body` goes to: the first matching rule's, else the model it names."""
    model = str(body.get("model"))
    input_tokens: int | None = None
    for rule in rules:
        if rule.model != model:
            continue
        if rule.tools is not None and bool(body.get("tools")) != rule.tools:
            continue
        if rule.header is not None and headers.get(rule.header[0]) != rule.header[1]:
            continue
        if rule.needs_tokens():
            if input_tokens is None:
                from ..request_estimate import estimate

                try:
                    # The name callers send is not a real model: count as the common tokenizer does.
                    input_tokens = estimate(body, family, fallback="o200k_base").input_tokens
                except (ConfigError, ValueError):
                    continue  # a body the estimate cannot read: no size-based rule applies
            if rule.max_input_tokens is not None and input_tokens > rule.max_input_tokens:
                continue
            if rule.min_input_tokens is not None and input_tokens < rule.min_input_tokens:
                continue
        return rule.alias
    return model
