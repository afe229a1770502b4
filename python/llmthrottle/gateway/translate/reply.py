"""A whole reply of one API family in the other's terms: the message, why it stopped, the usage,
and error bodies. Pure functions.

Usage is read by the pricing layer's `normalize_usage` (one home for how each provider counts)
and written back in the caller's shape: OpenAI's `prompt_tokens` include cached tokens
(`prompt_tokens_details.cached_tokens`), Anthropic's `input_tokens` exclude cache reads and
writes (`cache_read_input_tokens`, `cache_creation_input_tokens`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from ..._json import loads
from ...pricing.usage import TokenUsage, normalize_usage
from ...providers.protocol import Family, error_body
from .common import Untranslatable, dumps, items, json_object, member

__all__ = [
    "anthropic_message",
    "anthropic_usage",
    "error_as",
    "finish_reason",
    "openai_completion",
    "openai_usage",
    "stop_reason",
]

_FINISH_OF_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_OF_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason(stop: Any) -> str | None:
    """OpenAI's `finish_reason` for Anthropic's `stop_reason` (an unknown one is a stop)."""
    if stop is None:
        return None
    return _FINISH_OF_STOP.get(stop, "stop") if isinstance(stop, str) else "stop"


def stop_reason(finish: Any) -> str | None:
    """Anthropic's `stop_reason` for OpenAI's `finish_reason` (an unknown one is an end_turn)."""
    if finish is None:
        return None
    return _STOP_OF_FINISH.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def _tokens(usage: Any, family: Family) -> TokenUsage:
    try:
        return normalize_usage(usage, family)
    except (ValueError, TypeError) as error:
        raise Untranslatable(f"the deployment's usage cannot be read: {error}") from None


def openai_usage(usage: Any) -> dict[str, Any]:
    """An Anthropic usage in OpenAI chat's shape (cache reads and writes are prompt tokens)."""
    tokens = _tokens(usage, "anthropic")
    prompt = tokens.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": tokens.output_tokens,
        "total_tokens": prompt + tokens.output_tokens,
        "prompt_tokens_details": {"cached_tokens": tokens.cached_input_tokens},
    }


def anthropic_usage(usage: Any) -> dict[str, Any]:
    """An OpenAI usage in Anthropic's shape (cached tokens move out of the input count)."""
    tokens = _tokens(usage, "openai")
    return {
        "input_tokens": tokens.input_tokens + tokens.cache_write_tokens,
        "output_tokens": tokens.output_tokens,
        "cache_read_input_tokens": tokens.cached_input_tokens,
        "cache_creation_input_tokens": 0,
    }


def openai_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic message as an OpenAI chat completion."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in items(message.get("content")):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": dumps(block.get("input") or {})},
                }
            )
        # thinking blocks are not asked for by a translated request; anything else has no place
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    answer["refusal"] = None
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": answer,
                "finish_reason": finish_reason(message.get("stop_reason")) or "stop",
                "logprobs": None,
            }
        ],
        "usage": openai_usage(message.get("usage")),
    }


def anthropic_message(completion: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion (its first choice) as an Anthropic message."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    answer = member(choice, "message")
    content: list[dict[str, Any]] = []
    for text in (answer.get("content"), answer.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    for index, call in enumerate(items(answer.get("tool_calls"))):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json_object(function.get("arguments"), f"the deployment's tool call {index}"),
            }
        )
    stop = "refusal" if answer.get("refusal") else stop_reason(choice.get("finish_reason")) or "end_turn"
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }


def error_as(family: Family, status: int, data: bytes) -> bytes:
    """An upstream error body (either family's shape, or anything) in `family`'s shape, with its
    message kept."""
    message = ""
    try:
        decoded = loads(data)
    except (ValueError, RecursionError):
        decoded = None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    elif data:
        message = data[:500].decode("utf-8", errors="replace")
    kind = "server_error" if family == "openai" and status >= 500 else None
    return json.dumps(error_body(family, status, message or f"upstream error {status}", kind=kind)).encode()
