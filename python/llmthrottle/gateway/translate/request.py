"""A chat request of one API family in the other's terms: OpenAI Chat Completions ↔ Anthropic
Messages. Pure functions of the request body; the model is left as given (the gateway names the
deployment's).

What maps, OpenAI → Anthropic:
- `system` and `developer` messages → `system` (one text block each, in order; Anthropic has no
  system turn inside the conversation, so a later one is moved up there too);
- user content: text parts, and images as base64 `data:` URLs or http(s) URLs;
- assistant `tool_calls` → `tool_use` blocks, `tool` messages → `tool_result` blocks (consecutive
  results in one user turn, as Anthropic wants them);
- `max_completion_tokens` / `max_tokens` → `max_tokens` (Anthropic requires it: absent, the
  estimator's default reservation, 4096), `stop` → `stop_sequences`, `temperature` (at most 1 on
  Anthropic), `top_p`, `tools`, `tool_choice` (`required` → `any`), `parallel_tool_calls: false`
  → `disable_parallel_tool_use`, `user` → `metadata.user_id`.
And back the same way. A field that would change the answer but has no equivalent (`n` > 1,
`logprobs`, JSON response formats, audio, `top_k`, extended thinking, server tools, documents...)
is `Untranslatable`; fields that only tune delivery (`seed`, `store`, `service_tier`...) are
dropped, and so are marks the other API has no place for (message `name`s, `cache_control`,
a tool result's `is_error`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...request_estimate import DEFAULT_MAX_OUTPUT_TOKENS
from .common import Untranslatable, dumps, json_object, text_parts

__all__ = ["DEFAULT_MAX_TOKENS", "anthropic_to_openai", "openai_to_anthropic"]

#: `max_tokens` sent to an Anthropic deployment when an OpenAI caller gave none (Anthropic
#: requires one): the output the estimator reserves for such a request.
DEFAULT_MAX_TOKENS = DEFAULT_MAX_OUTPUT_TOKENS

# OpenAI fields dropped on the way to Anthropic: they tune delivery, not the answer.
_OPENAI_DROPPED = frozenset(
    ("model", "stream_options", "seed", "store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key")
)
# OpenAI fields whose default (absent, null, or these values) means "nothing asked".
_OPENAI_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "response_format": ({"type": "text"},),
}
_OPENAI_MAPPED = frozenset(
    (
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
    )
)
_ANTHROPIC_DROPPED = frozenset(("model", "service_tier"))
_ANTHROPIC_DEFAULTS: dict[str, tuple[Any, ...]] = {"thinking": ({"type": "disabled"},)}
_ANTHROPIC_MAPPED = frozenset(
    (
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
    )
)
_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise Untranslatable(f"{name} must be a list")
    return value


def _check_fields(
    body: Mapping[str, Any],
    mapped: frozenset[str],
    dropped: frozenset[str],
    defaults: dict[str, tuple[Any, ...]],
    to: str,
) -> None:
    for name, value in body.items():
        if name in mapped or name in dropped or value is None:
            continue
        if name in defaults and value in defaults[name]:
            continue
        raise Untranslatable(f"{name} = {dumps(value)[:80]} has no equivalent in the {to} API")


# ---------------------------------------------------------------------- OpenAI → Anthropic


def openai_to_anthropic(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic Messages request."""
    _check_fields(body, _OPENAI_MAPPED, _OPENAI_DROPPED, _OPENAI_DEFAULTS, "Anthropic Messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Untranslatable("messages must be a non-empty list")
    system: list[dict[str, Any]] = []
    system_strings = 0
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise Untranslatable(f"{where} must be an object")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend({"type": "text", "text": text} for text in text_parts(content, where))
            system_strings += isinstance(content, str)
        elif role == "user":
            turns.append({"role": "user", "content": _user_content(content, where)})
        elif role == "assistant":
            turns.append({"role": "assistant", "content": _assistant_content(message, where)})
        elif role == "tool":
            result = _tool_result(message, where)
            previous = turns[-1] if turns else None
            if previous is not None and previous["role"] == "user" and _only_tool_results(previous["content"]):
                previous["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
        else:
            raise Untranslatable(f"{where}: a {role!r} message has no Anthropic equivalent")
    out: dict[str, Any] = {"model": body.get("model"), "messages": turns}
    if system:
        # One system string stays a string; several (or text parts) become blocks, in order.
        out["system"] = system[0]["text"] if len(system) == 1 and system_strings == 1 else system
    limit = body.get("max_completion_tokens")
    out["max_tokens"] = limit if limit is not None else body.get("max_tokens") or DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, (int, float)) and temperature > 1:
            raise Untranslatable(f"temperature = {temperature} is above the Anthropic API's maximum of 1")
        out["temperature"] = temperature
    for name in ("top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("tools"):
        out["tools"] = [_anthropic_tool(tool, f"tools[{i}]") for i, tool in enumerate(_list(body["tools"], "tools"))]
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("user") is not None:
        out["metadata"] = {"user_id": body["user"]}
    return out


def _user_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    return [_user_block(part, f"{where}.content[{i}]") for i, part in enumerate(content)]


def _user_block(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise Untranslatable(f"{where}: the text must be a string")
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise Untranslatable(f"{where}: image_url.url must be a string")
        found = _DATA_URL.fullmatch(url)
        if found is not None:
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": found["media"], "data": found["data"]},
            }
        if url.startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise Untranslatable(f"{where}: an image must be a base64 data: URL or an http(s) URL")
    raise Untranslatable(f"{where}: a content part of type {kind!r} has no Anthropic equivalent")


def _assistant_content(message: Mapping[str, Any], where: str) -> Any:
    for name in ("function_call", "audio"):
        if message.get(name) is not None:
            raise Untranslatable(f"{where}: {name} has no Anthropic equivalent")
    content, calls = message.get("content"), message.get("tool_calls") or []
    if isinstance(content, str) and not calls:
        return content
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": text} for text in text_parts(content, where, ("text", "refusal")) if text
    ]
    if not isinstance(calls, list):
        raise Untranslatable(f"{where}: tool_calls must be a list")
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise Untranslatable(f"{call_where}: only function tool calls can be translated")
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json_object(function.get("arguments"), call_where),
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    result["content"] = (
        content if isinstance(content, str) else [{"type": "text", "text": t} for t in text_parts(content, where)]
    )
    return result


def _only_tool_results(content: Any) -> bool:
    return isinstance(content, list) and all(block.get("type") == "tool_result" for block in content)


def _anthropic_tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise Untranslatable(f"{where}: only function tools can be translated")
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description") is not None:
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return out


def _anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise Untranslatable(f"tool_choice = {dumps(choice)[:80]} has no Anthropic equivalent")


# ---------------------------------------------------------------------- Anthropic → OpenAI


def anthropic_to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat completion request."""
    _check_fields(body, _ANTHROPIC_MAPPED, _ANTHROPIC_DROPPED, _ANTHROPIC_DEFAULTS, "OpenAI Chat Completions")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        messages.extend({"role": "system", "content": text} for text in text_parts(system, "system"))
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise Untranslatable("messages must be a non-empty list")
    for index, turn in enumerate(turns):
        where = f"messages[{index}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "user":
            messages.extend(_openai_user(turn.get("content"), where))
        elif role == "assistant":
            messages.append(_openai_assistant(turn.get("content"), where))
        else:
            raise Untranslatable(f"{where}: role must be user or assistant, not {role!r}")
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_completion_tokens"] = body["max_tokens"]
    if body.get("stop_sequences") is not None:
        out["stop"] = body["stop_sequences"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stream"):
        # The usage comes on the stream's last chunk only when asked for; the translated stream
        # needs it for its message_delta.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = [_openai_tool(tool, f"tools[{i}]") for i, tool in enumerate(_list(body["tools"], "tools"))]
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_openai_tool_choice(choice))
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        out["user"] = metadata["user_id"]
    return out


def _openai_user(content: Any, where: str) -> list[dict[str, Any]]:
    """The OpenAI messages of one Anthropic user turn: its tool results first (each a `tool`
    message, which must follow the assistant's calls), then what the user said, if anything."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of blocks")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            inner = block.get("content")
            texts = text_parts(inner, block_where)
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": inner if isinstance(inner, str) else [{"type": "text", "text": t} for t in texts],
                }
            )
        elif kind == "text":
            if not isinstance(block.get("text"), str):
                raise Untranslatable(f"{block_where}: the text must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), block_where)}})
        else:
            raise Untranslatable(f"{block_where}: a {kind!r} block has no OpenAI equivalent")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise Untranslatable(f"{where}: an image must come as base64 data or a URL")


def _openai_assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise Untranslatable(f"{block_where}: a tool_use input must be an object")
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": dumps(arguments)},
                }
            )
        else:
            raise Untranslatable(f"{block_where}: a {kind!r} block has no OpenAI equivalent")
    message: dict[str, Any] = {"role": "assistant"}
    # One text block is a string; several stay parts, so that none is merged into another.
    message["content"] = (
        texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts] if texts else None
    )
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        raise Untranslatable(f"{where}: only client tools with an input_schema can be translated")
    function: dict[str, Any] = {"name": tool.get("name")}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool["input_schema"]
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind in ("auto", "none"):
        out = {"tool_choice": kind}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise Untranslatable(f"tool_choice = {dumps(choice)[:80]} has no OpenAI equivalent")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out
