"""What the translations share: the error for what one API cannot say in the other's terms, and
the small readers of message content both directions use."""

from __future__ import annotations

import json
from typing import Any

from ..._native import LlmthrottleError

__all__ = ["Untranslatable", "dumps", "items", "json_object", "member", "text_parts"]


class Untranslatable(LlmthrottleError, ValueError):
    """A request (or reply) that has no faithful equivalent in the other API family: the caller
    gets a 400 in its own API's shape naming what could not be translated."""


def dumps(value: Any) -> str:
    """JSON as both providers write it on the wire: compact, unicode kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def items(value: Any) -> list[Any]:
    """`value` when it is a list, else an empty one: for reading optional lists of a reply."""
    return value if isinstance(value, list) else []


def member(value: Any, name: str) -> dict[str, Any]:
    """`value[name]` when both are objects, else an empty one: for reading optional nested fields."""
    inner = value.get(name) if isinstance(value, dict) else None
    return inner if isinstance(inner, dict) else {}


def json_object(text: Any, where: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON text, '' meaning none) as the object they must be."""
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise Untranslatable(f"{where}: the arguments must be a JSON text, not {type(text).__name__}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise Untranslatable(f"{where}: the arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise Untranslatable(f"{where}: the arguments must be a JSON object, not {type(value).__name__}")
    return value


def text_parts(content: Any, where: str, kinds: tuple[str, ...] = ("text",)) -> list[str]:
    """The texts of a content that may only hold text: a string, or a list of text parts or
    blocks (`kinds` names the part types read as text)."""
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise Untranslatable(f"{where}.content[{index}]: a part of type {kind!r} cannot be translated here")
        text = part.get(kind)  # {"type": "text", "text": ...}, {"type": "refusal", "refusal": ...}
        if not isinstance(text, str):
            raise Untranslatable(f"{where}.content[{index}]: the text must be a string")
        texts.append(text)
    return texts
