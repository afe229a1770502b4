"""Which model a wrapped call is counted and priced as.

A request names a model (`"gpt-4o-mini"`) or, on Azure OpenAI, a deployment (`"chat-prod"`),
whose name need not say what it runs. Before the reply, llmthrottle counts and prices the call
as `model_of[name]` when the caller mapped the name (`lt.wrap(..., model_of={"chat-prod":
"gpt-4o"})`), else as the name itself. Azure's reply names the model that answered
(`"gpt-4o-2024-08-06"`): the call is priced and recorded as that model when the price table
knows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._native import ConfigError
from ..pricing.table import PriceTable
from ..tokens import encoding_name_for_model

if TYPE_CHECKING:
    from .call import Settings
    from .protocol import Endpoint

__all__ = ["as_sent", "check_model_of", "counted_model", "priced_model", "request_model", "require_known"]


def check_model_of(model_of: Any) -> Mapping[str, str] | None:
    """`model_of` as `wrap` takes it (None, or a mapping of request name to a model llmthrottle
    can count); a ConfigError naming the entry otherwise."""
    if model_of is None:
        return None
    if not isinstance(model_of, Mapping):
        raise ConfigError(f"model_of must be a mapping of deployment name to model, not {type(model_of).__name__}")
    for name, model in model_of.items():
        if not isinstance(name, str) or not name or not isinstance(model, str) or not model:
            raise ConfigError(f"model_of: {name!r}: {model!r} must map a non-empty name to a non-empty model name")
        try:
            encoding_name_for_model(model)
        except ConfigError:
            raise ConfigError(
                f"model_of: {name!r} maps to {model!r}, a model llmthrottle has no tokenizer for "
                "(name the OpenAI model the deployment runs, e.g. 'gpt-4o')"
            ) from None
    return dict(model_of)


def counted_model(name: str, body_model: Any, model_of: Mapping[str, str] | None) -> str:
    """The model a request is counted and priced as before its reply: `model_of`'s for its
    `name` (an Azure deployment, or the model) or for its body's `model`; else the body's `model`
    (what the caller says the deployment runs), else `name`."""
    named = body_model if isinstance(body_model, str) and body_model else None
    if model_of:
        for candidate in (name, named):
            if candidate is not None and candidate in model_of:
                return model_of[candidate]
    return named or name


def require_known(model: str, deployment: str, prices: PriceTable) -> None:
    """Raises a ConfigError that says how to map an Azure deployment whose name is not a model
    llmthrottle can count and price (a guard admits a call at its worst-case cost)."""
    try:
        encoding_name_for_model(model)
    except ConfigError:
        reason = "has no tokenizer"
    else:
        try:
            prices.resolve(model, "openai")
            return
        except ConfigError:
            reason = "has no price in the guard's price table"
    raise ConfigError(
        f"the Azure deployment {deployment!r} is counted and priced as the model {model!r}, which {reason}: "
        f"name the model it runs with lt.wrap(client, ..., model_of={{{deployment!r}: 'gpt-4o'}})"
    )


def priced_model(reply_model: str, prices: PriceTable | None) -> str | None:
    """The model an Azure reply names, when `prices` (default: the shipped table) prices it;
    None when it does not, or only at the table's fallback price (the call stays priced as it
    was counted: a fallback says nothing of what the model costs)."""
    table = prices or PriceTable.default()
    try:
        price = table.resolve(reply_model, "openai")
    except ConfigError:
        return None
    return None if price is table.fallback else reply_model


def request_model(endpoint: Endpoint, body: dict[str, Any], settings: Settings) -> tuple[str, str, Any] | None:
    """(name, model, the body's `model` as sent) of an LLM request, or None when it names no
    model. `name` scopes the provider's limits: the model, or Azure's deployment (the path's,
    else the body's); `model` is what the call is counted and priced as."""
    wire_model = body.get("model")
    if endpoint.azure_deployment is None:
        if not isinstance(wire_model, str):
            return None
        model_of = settings.model_of
        return wire_model, model_of.get(wire_model, wire_model) if model_of else wire_model, wire_model
    named = wire_model if isinstance(wire_model, str) and wire_model else None
    name = endpoint.azure_deployment or named
    if not name:
        return None
    model = counted_model(name, wire_model, settings.model_of)
    if settings.guard is not None:
        require_known(model, name, settings.guard.prices)
    return name, model, wire_model


def as_sent(body: dict[str, Any], wire_model: Any) -> dict[str, Any]:
    """`body` (counted as its `model`) with the `model` the caller sent, or none if it had none."""
    if body.get("model") == wire_model:
        return body
    if wire_model is None:
        return {name: value for name, value in body.items() if name != "model"}
    return {**body, "model": wire_model}
