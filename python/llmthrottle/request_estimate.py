"""Token estimates of whole API request bodies, before they are sent.

``estimate(body)`` returns the input tokens the request will be billed for (as closely as the
public rules allow) and the output tokens to reserve. Every text is counted exactly with the
model's encoding; what is approximate is the framing the provider adds around it:

- **OpenAI chat completions** (``messages``): the OpenAI cookbook's rule ("How to count tokens
  with tiktoken"): 3 tokens per message, every string field of the message counted (role,
  content, name, ...), +1 per ``name``, +3 priming the reply. Assistant ``tool_calls`` count
  their function name and arguments.
- **Tool / function definitions** (``tools`` or legacy ``functions``): the cookbook's
  approximation for function calling: 7 tokens per function (10 for gpt-4 / gpt-3.5), its
  ``name:description`` line, 3 for the parameter block, per property 3 plus
  ``name:type:description`` (enums: -3 then 3 + the text per item), and 12 at the end.
  Nested schemas (objects, arrays of objects) add the compact JSON of the nested schema, which
  over-counts rather than under-counts.
- **Images**: OpenAI's tile rule: ``detail="low"`` is 85 tokens; otherwise (``high``/``auto``)
  the image is scaled to fit 2048x2048, then its shortest side to 768, and costs 170 per 512-px
  tile + 85 (gpt-4o-mini: 5667 per tile + 2833). The size comes from a ``data:`` URL (PNG, JPEG,
  GIF and WebP headers are read) or from the ``image_size`` callback; when it is unknown, the
  worst case of the rule is charged (768x2048: 8 tiles, 1445 tokens; 47,169 for gpt-4o-mini).
- **Responses API** (``input``, ``instructions``, ``max_output_tokens``): ``instructions`` as a
  system message, each input message as a chat message; ``function_call`` items count name and
  arguments, ``function_call_output`` items their output.
- **Embeddings** (``input``: a string, a list of strings, or pre-tokenized ids): the sum of the
  counts, no framing; nothing to reserve for output.
- **Anthropic messages** (``system``, ``messages`` with content blocks, ``tools``,
  ``max_tokens``): Anthropic's tokenizer is not public, so texts are counted with o200k_base and
  the chat framing above is applied; expect Claude's real counts to differ by 10-30% (they are
  usually higher for code and non-English text). Images: (width x height) / 750 after scaling
  to fit 1568 px on the long edge, 1600 when the size is unknown. Use the provider's
  count-tokens endpoint where exactness matters.

The output reservation is ``max_completion_tokens`` / ``max_tokens`` (chat, Anthropic) or
``max_output_tokens`` (responses), else ``default_max_output_tokens``. A malformed body raises
``InvalidRequestBody`` (a ``ValueError``) naming the offending field, e.g.
``messages[2].content[0]``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._native import Encoding, LlmthrottleError
from .tokens import _clear_on_register, encoding_for_model, get_encoding

__all__ = ["InvalidRequestBody", "RequestEstimate", "estimate"]

ImageSize = tuple[int, int]
ImageSizeLookup = Callable[[str], ImageSize | None]

DEFAULT_MAX_OUTPUT_TOKENS = 4096
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Where each API's body says how many tokens the reply may use, in order of precedence.
_CHAT_OUTPUT = ("max_completion_tokens", "max_tokens")
_ANTHROPIC_OUTPUT = ("max_tokens",)


class InvalidRequestBody(LlmthrottleError, ValueError):
    """A request body is not shaped as its API expects; the message names the field path."""


@dataclass(frozen=True)
class RequestEstimate:
    """Tokens a request will use: ``input_tokens`` billed as input, ``max_output_tokens`` to
    reserve for the answer, and the encoding that counted them. ``approximate`` is True when the
    count is not the provider's own: an Anthropic body (counted with o200k_base, Anthropic
    publishes no tokenizer) or ``exact=False`` (the fast estimator)."""

    input_tokens: int
    max_output_tokens: int
    encoding: str
    approximate: bool = False

    @property
    def total(self) -> int:
        """Input plus reserved output: the amount to acquire from a token limit."""
        return self.input_tokens + self.max_output_tokens


def estimate(
    body: Mapping[str, Any],
    provider: Literal["openai", "anthropic"] | None = None,
    model: str | None = None,
    *,
    endpoint: Literal["chat", "responses", "embeddings", "completions"] | None = None,
    fallback: str | None = None,
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    image_size: ImageSizeLookup | None = None,
    exact: bool = True,
) -> RequestEstimate:
    """Estimates a request body; see the module docstring for the rules.

    With ``exact=False`` text is counted by the fast estimator (no vocabulary walk; its error is
    documented in ``llmthrottle.tokens``) instead of the exact tokenizer.

    ``provider`` defaults to ``"anthropic"`` for ``claude*`` models and ``"openai"`` otherwise;
    Anthropic bodies are counted with o200k_base, an approximation (Anthropic publishes no
    tokenizer), as the ``encoding`` field of the result says. ``model`` defaults to
    ``body["model"]``. For OpenAI the endpoint is inferred from the body
    (``messages`` -> chat, ``input`` -> embeddings for ``text-embedding-*`` models else
    responses, ``prompt`` -> completions) unless ``endpoint`` is given. ``fallback`` names the
    encoding for an OpenAI-compatible model the library does not know.
    """
    if type(body) is not dict and not isinstance(body, Mapping):
        raise InvalidRequestBody(f"request body must be a mapping, not {type(body).__name__}")
    if (
        type(default_max_output_tokens) is not int
        and (isinstance(default_max_output_tokens, bool) or not isinstance(default_max_output_tokens, int))
    ) or default_max_output_tokens < 0:
        raise ValueError("default_max_output_tokens must be a non-negative int")
    if model is None:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequestBody(f"model must be a string, not {type(model).__name__}")
    if provider is None:  # an Anthropic model's body is Anthropic's, whatever else it holds
        provider = "anthropic" if (model or "").startswith("claude") else "openai"
    lookup = image_size or _no_image_size
    if provider == "anthropic":
        encoding = _encoding(provider, model or "", fallback)
        plain = _plain_counts(encoding, body, provider, None, default_max_output_tokens) if exact else None
        if plain is not None:
            return RequestEstimate(plain[0], plain[1], encoding.name, approximate=True)
        counter = _Counter(encoding, model or "", lookup, exact, approximate=True)
        return counter.anthropic(body, default_max_output_tokens)
    if provider != "openai":
        raise ValueError(f"provider must be 'openai' or 'anthropic', not {provider!r}")
    if model is None:
        raise InvalidRequestBody("model is missing: pass model= or put it in the body")
    encoding = _encoding(provider, model, fallback)
    if endpoint is None:
        if "messages" in body:
            endpoint = "chat"
        elif "input" in body:
            endpoint = "embeddings" if model.startswith("text-embedding") else "responses"
        elif "prompt" in body:
            endpoint = "completions"
        else:
            raise InvalidRequestBody("body has none of messages, input or prompt")
    if exact:
        plain = _plain_counts(encoding, body, provider, endpoint, default_max_output_tokens)
        if plain is not None:
            return RequestEstimate(plain[0], plain[1], encoding.name)
    counter = _Counter(encoding, model, lookup, exact)
    if endpoint == "chat":
        return counter.chat(body, default_max_output_tokens)
    if endpoint == "responses":
        return counter.responses(body, default_max_output_tokens)
    if endpoint == "embeddings":
        return counter.embeddings(body)
    if endpoint == "completions":
        return counter.completions(body, default_max_output_tokens)
    raise ValueError(f"unknown endpoint {endpoint!r}")


def _encoding(provider: str, model: str, fallback: str | None) -> Encoding:
    """What a body is counted with: an OpenAI model's encoding, o200k_base for Anthropic's (see
    the module docstring)."""
    if provider == "anthropic":
        return get_encoding("o200k_base")
    return encoding_for_model(model, fallback=fallback)


def _plain_shape(provider: str, endpoint: str | None) -> tuple[str | None, tuple[str, ...]] | None:
    """(system key, output keys) of the plainest body shape (string messages, an optional
    string system, no tools), which `Encoding.plain_chat_estimate` counts in one call with the
    rules `_Counter` walks (its test oracle): Anthropic messages and OpenAI chat; None for any
    other endpoint."""
    if provider == "anthropic":
        return "system", _ANTHROPIC_OUTPUT
    if endpoint == "chat":
        return None, _CHAT_OUTPUT
    return None


def _plain_counts(
    encoding: Encoding, body: Mapping[str, Any], provider: str, endpoint: str | None, default: int
) -> tuple[int, int] | None:
    """(input, output reservation) of a body in the plainest shape, counted natively; None for
    any other body or endpoint."""
    shape = _plain_shape(provider, endpoint)
    if shape is None:
        return None
    # By position: every wrapped call asks, and keywords cost more to match.
    return encoding.plain_chat_estimate(body, TOKENS_PER_MESSAGE, REPLY_PRIMING, shape[0], shape[1], default)


# (provider, endpoint, model, fallback) -> the encoding `estimate_counts` counts a plain body of
# it with (`_encoding`), None for an endpoint without a plain shape: a wrapped call asks on every
# request, where looking the encoding up costs more than counting a short prompt. Emptied with
# the tokens module's own memo when a model is registered; bounded: model names come from callers.
_PLAIN: dict[tuple[str, str | None, str, str | None], Encoding | None] = {}
_PLAIN_MAX = 1024
_UNSEEN: Any = object()
_clear_on_register(_PLAIN)


def _plain_encoding(provider: str, endpoint: str | None, model: str, fallback: str | None) -> Encoding | None:
    found = None if _plain_shape(provider, endpoint) is None else _encoding(provider, model, fallback)
    if len(_PLAIN) >= _PLAIN_MAX:
        _PLAIN.clear()
    _PLAIN[(provider, endpoint, model, fallback)] = found
    return found


def estimate_counts(
    body: Mapping[str, Any],
    provider: Literal["openai", "anthropic"],
    endpoint: Literal["chat", "responses", "embeddings"] | None,
    fallback: str | None = None,
) -> tuple[int, int]:
    """`estimate(body, provider, endpoint=endpoint, fallback=fallback)` as (input tokens, output
    reservation): what a wrapped call reserves on every request, so the plainest bodies skip
    the checks and objects of the general walk (they are counted by the same rules)."""
    model = body.get("model") if type(body) is dict else None
    if type(model) is str:
        key = (provider, endpoint, model, fallback)
        encoding: Encoding | None = _PLAIN.get(key, _UNSEEN)
        if encoding is _UNSEEN:
            encoding = _plain_encoding(*key)
        if encoding is not None:
            counted = _plain_counts(encoding, body, provider, endpoint, DEFAULT_MAX_OUTPUT_TOKENS)
            if counted is not None:
                return counted
    walked = estimate(body, provider, endpoint=endpoint, fallback=fallback)
    return walked.input_tokens, walked.max_output_tokens


def _no_image_size(url: str) -> ImageSize | None:
    return None


def _type_name(value: object) -> str:
    return type(value).__name__


def _objects(items: object, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each element of the list `items` with its path; `items` must be a list of objects."""
    if not isinstance(items, list):
        raise InvalidRequestBody(f"{path} must be a list, not {_type_name(items)}")
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequestBody(f"{item_path} must be an object, not {_type_name(item)}")
        yield item_path, item


class _Counter:
    """Counts one body with one encoding; each method walks one API's body shape."""

    def __init__(
        self, encoding: Encoding, model: str, image_size: ImageSizeLookup, exact: bool = True, approximate: bool = False
    ) -> None:
        self.encoding = encoding
        self.approximate = approximate or not exact
        self.count = encoding.count if exact else encoding.estimate
        self.model = model
        self.image_size = image_size

    def text(self, value: object, path: str) -> int:
        if not isinstance(value, str):
            raise InvalidRequestBody(f"{path} must be a string, not {_type_name(value)}")
        return self.count(value)

    def done(self, input_tokens: int, body: Mapping[str, Any], keys: Sequence[str], default: int) -> RequestEstimate:
        reserve = default
        for key in keys:
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidRequestBody(f"{key} must be a non-negative integer, not {value!r}")
                reserve = value
                break
        return RequestEstimate(input_tokens, reserve, self.encoding.name, self.approximate)

    # --- OpenAI chat completions -------------------------------------------------------------

    def chat(self, body: Mapping[str, Any], default: int) -> RequestEstimate:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequestBody(f"messages must be a list, not {_type_name(messages)}")
        total = sum(self.chat_message(m, f"messages[{i}]") for i, m in enumerate(messages))
        total += REPLY_PRIMING
        total += self.tools(body)
        return self.done(total, body, _CHAT_OUTPUT, default)

    def chat_message(self, message: object, path: str) -> int:
        if type(message) is dict and len(message) == 2:  # the common {"role", "content"} of two strings
            role, content = message.get("role"), message.get("content")
            if type(role) is str and type(content) is str:
                return TOKENS_PER_MESSAGE + self.count(role) + self.count(content)
        if not isinstance(message, Mapping):
            raise InvalidRequestBody(f"{path} must be an object, not {_type_name(message)}")
        if "role" not in message:
            raise InvalidRequestBody(f"{path}.role is missing")
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            field = f"{path}.{key}"
            if value is None:
                continue
            if key == "content":
                total += self.chat_content(value, field)
            elif key == "tool_calls":
                total += self.tool_calls(value, field)
            elif key == "function_call":
                total += self.function_call(value, field)
            elif isinstance(value, str):
                total += self.count(value)
                if key == "name":
                    total += TOKENS_PER_NAME
            elif key in ("role", "name", "tool_call_id"):
                raise InvalidRequestBody(f"{field} must be a string, not {_type_name(value)}")
            # Other non-string fields (audio references, refusal=None, ...) are not billed text.
        return total

    def chat_content(self, content: object, path: str) -> int:
        if isinstance(content, str):
            return self.count(content)
        if not isinstance(content, list):
            raise InvalidRequestBody(f"{path} must be a string or a list of parts, not {_type_name(content)}")
        total = 0
        for part_path, part in _objects(content, path):
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text", "refusal"):
                key = "refusal" if kind == "refusal" else "text"
                total += self.text(part.get(key), f"{part_path}.{key}")
            elif kind == "image_url":
                image = part.get("image_url")
                if isinstance(image, str):
                    image = {"url": image}
                if not isinstance(image, Mapping):
                    raise InvalidRequestBody(f"{part_path}.image_url must be an object, not {_type_name(image)}")
                total += self.openai_image(image.get("url"), image.get("detail"), f"{part_path}.image_url")
            elif kind == "input_image":
                total += self.openai_image(part.get("image_url"), part.get("detail"), part_path)
            elif kind == "input_audio" or kind == "file" or kind == "input_file":
                raise InvalidRequestBody(f"{part_path}: {kind} parts cannot be estimated")
            else:
                raise InvalidRequestBody(f"{part_path}.type {kind!r} is not a known content part type")
        return total

    def tool_calls(self, calls: object, path: str) -> int:
        return sum(
            self.function_call(call.get("function"), f"{call_path}.function")
            for call_path, call in _objects(calls, path)
        )

    def function_call(self, call: object, path: str) -> int:
        if not isinstance(call, Mapping):
            raise InvalidRequestBody(f"{path} must be an object, not {_type_name(call)}")
        return self.text(call.get("name"), f"{path}.name") + self.text(call.get("arguments", ""), f"{path}.arguments")

    def tools(self, body: Mapping[str, Any]) -> int:
        """The cookbook's function-definition approximation (see the module docstring)."""
        functions: list[tuple[object, str]] = []
        tools = body.get("tools")
        if tools is not None:
            for tool_path, tool in _objects(tools, "tools"):
                if "function" in tool:
                    functions.append((tool["function"], f"{tool_path}.function"))
                else:  # responses API: flat {"type": "function", "name": ..., "parameters": ...}
                    functions.append((tool, tool_path))
        legacy = body.get("functions")
        if legacy is not None:
            if not isinstance(legacy, list):
                raise InvalidRequestBody(f"functions must be a list, not {_type_name(legacy)}")
            functions += [(f, f"functions[{i}]") for i, f in enumerate(legacy)]
        if not functions:
            return 0
        function_init = 10 if self.model.startswith(("gpt-4-", "gpt-3.5")) or self.model == "gpt-4" else 7
        total = 12
        for function, path in functions:
            total += function_init + self.function_definition(function, path)
        return total

    def function_definition(self, function: object, path: str) -> int:
        if not isinstance(function, Mapping):
            raise InvalidRequestBody(f"{path} must be an object, not {_type_name(function)}")
        name = function.get("name")
        if not isinstance(name, str):
            raise InvalidRequestBody(f"{path}.name must be a string, not {_type_name(name)}")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise InvalidRequestBody(f"{path}.description must be a string")
        total = self.count(f"{name}:{description.removesuffix('.')}")
        parameters = function.get("parameters")
        if parameters is None:
            return total
        if not isinstance(parameters, Mapping):
            raise InvalidRequestBody(f"{path}.parameters must be an object, not {_type_name(parameters)}")
        properties = parameters.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise InvalidRequestBody(f"{path}.parameters.properties must be an object")
        if properties:
            total += 3
        for key, schema in properties.items():
            prop_path = f"{path}.parameters.properties.{key}"
            if not isinstance(schema, Mapping):
                raise InvalidRequestBody(f"{prop_path} must be an object, not {_type_name(schema)}")
            total += 3
            kind = schema.get("type", "")
            if isinstance(kind, list):
                kind = "|".join(str(k) for k in kind)
            prop_description = schema.get("description") or ""
            if not isinstance(prop_description, str):
                raise InvalidRequestBody(f"{prop_path}.description must be a string")
            enum = schema.get("enum")
            if isinstance(enum, list):
                total -= 3
                for item in enum:
                    total += 3 + self.count(str(item))
            total += self.count(f"{key}:{kind}:{prop_description.removesuffix('.')}")
            nested = {k: v for k, v in schema.items() if k in ("properties", "items", "anyOf", "oneOf")}
            if nested:
                total += self.count(json.dumps(nested, separators=(",", ":"), ensure_ascii=False))
        return total

    def openai_image(self, url: object, detail: object, path: str) -> int:
        if not isinstance(url, str):
            raise InvalidRequestBody(f"{path}.url must be a string, not {_type_name(url)}")
        if detail not in (None, "auto", "low", "high"):
            raise InvalidRequestBody(f"{path}.detail must be 'low', 'high' or 'auto', not {detail!r}")
        base, per_tile = (2833, 5667) if self.model.startswith("gpt-4o-mini") else (85, 170)
        if detail == "low":
            return base
        size = self.image_size(url) or image_size_from_data_url(url)
        if size is None:
            return base + 8 * per_tile  # the rule's worst case: 768x2048 is 2x4 tiles
        width, height = size
        return base + per_tile * openai_tiles(width, height)

    # --- OpenAI responses, embeddings, completions -------------------------------------------

    def responses(self, body: Mapping[str, Any], default: int) -> RequestEstimate:
        total = REPLY_PRIMING
        instructions = body.get("instructions")
        if instructions is not None:
            total += TOKENS_PER_MESSAGE + self.count("system")
            total += self.text(instructions, "instructions")
        items = body.get("input")
        if isinstance(items, str):
            total += TOKENS_PER_MESSAGE + self.count("user") + self.count(items)
        elif isinstance(items, list):
            for i, item in enumerate(items):
                total += self.response_item(item, f"input[{i}]")
        else:
            raise InvalidRequestBody(f"input must be a string or a list, not {_type_name(items)}")
        total += self.tools(body)
        return self.done(total, body, ("max_output_tokens",), default)

    def response_item(self, item: object, path: str) -> int:
        if not isinstance(item, Mapping):
            raise InvalidRequestBody(f"{path} must be an object, not {_type_name(item)}")
        kind = item.get("type", "message")
        if kind == "message":
            return self.chat_message({k: v for k, v in item.items() if k in ("role", "content", "name")}, path)
        if kind == "function_call":
            return TOKENS_PER_MESSAGE + self.function_call(item, path)
        if kind == "function_call_output":
            output = item.get("output")
            return TOKENS_PER_MESSAGE + (self.chat_content(output, f"{path}.output") if output is not None else 0)
        if kind == "reasoning":
            return 0  # carried by id; its tokens were billed when produced
        raise InvalidRequestBody(f"{path}.type {kind!r} is not a known input item type")

    def embeddings(self, body: Mapping[str, Any]) -> RequestEstimate:
        value = body.get("input")
        if isinstance(value, str):
            total = self.count(value)
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            total = len(value)  # one pre-tokenized input
        elif isinstance(value, list):
            total = 0
            for i, item in enumerate(value):
                if isinstance(item, str):
                    total += self.count(item)
                elif isinstance(item, list) and all(isinstance(v, int) for v in item):
                    total += len(item)
                else:
                    raise InvalidRequestBody(
                        f"input[{i}] must be a string or a list of token ids, not {_type_name(item)}"
                    )
        else:
            raise InvalidRequestBody(f"input must be a string or a list, not {_type_name(value)}")
        return RequestEstimate(total, 0, self.encoding.name, self.approximate)

    def completions(self, body: Mapping[str, Any], default: int) -> RequestEstimate:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            total = self.count(prompt)
        elif isinstance(prompt, list):
            total = sum(self.text(p, f"prompt[{i}]") for i, p in enumerate(prompt))
        else:
            raise InvalidRequestBody(f"prompt must be a string or a list, not {_type_name(prompt)}")
        return self.done(total, body, _ANTHROPIC_OUTPUT, default)

    # --- Anthropic messages --------------------------------------------------------------------

    def anthropic(self, body: Mapping[str, Any], default: int) -> RequestEstimate:
        total = REPLY_PRIMING
        system = body.get("system")
        if system is not None:
            total += TOKENS_PER_MESSAGE + self.anthropic_content(system, "system")
        for path, message in _objects(body.get("messages"), "messages"):
            total += TOKENS_PER_MESSAGE + self.text(message.get("role"), f"{path}.role")
            if "content" not in message:
                raise InvalidRequestBody(f"{path}.content is missing")
            total += self.anthropic_content(message["content"], f"{path}.content")
        tools = body.get("tools")
        if tools is not None:
            for _, tool in _objects(tools, "tools"):
                total += self.count(json.dumps(tool, separators=(",", ":"), ensure_ascii=False))
        return self.done(total, body, _ANTHROPIC_OUTPUT, default)

    def anthropic_content(self, content: object, path: str) -> int:
        if isinstance(content, str):
            return self.count(content)
        if not isinstance(content, list):
            raise InvalidRequestBody(f"{path} must be a string or a list of blocks, not {_type_name(content)}")
        total = 0
        for block_path, block in _objects(content, path):
            kind = block.get("type")
            if kind == "text":
                total += self.text(block.get("text"), f"{block_path}.text")
            elif kind == "image":
                total += self.anthropic_image(block.get("source"), f"{block_path}.source")
            elif kind == "tool_use":
                total += self.text(block.get("name"), f"{block_path}.name")
                total += self.count(json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False))
            elif kind == "tool_result":
                inner = block.get("content")
                if inner is not None:
                    total += self.anthropic_content(inner, f"{block_path}.content")
            elif kind in ("thinking", "redacted_thinking"):
                thinking = block.get("thinking")
                total += self.count(thinking) if isinstance(thinking, str) else 0
            elif kind == "document":
                raise InvalidRequestBody(f"{block_path}: document blocks cannot be estimated")
            else:
                raise InvalidRequestBody(f"{block_path}.type {kind!r} is not a known content block type")
        return total

    def anthropic_image(self, source: object, path: str) -> int:
        if not isinstance(source, Mapping):
            raise InvalidRequestBody(f"{path} must be an object, not {_type_name(source)}")
        size: ImageSize | None = None
        if source.get("type") == "base64":
            data = source.get("data")
            if not isinstance(data, str):
                raise InvalidRequestBody(f"{path}.data must be a base64 string")
            size = image_size_from_bytes(_b64decode(data))
        elif isinstance(source.get("url"), str):
            size = self.image_size(source["url"])
        if size is None:
            return 1600  # the cap: Anthropic scales larger images down to ~1.15 megapixels
        width, height = size
        scale = min(1.0, 1568 / max(width, height, 1))
        return min(1600, max(1, math.ceil(width * scale * height * scale / 750)))


def openai_tiles(width: int, height: int) -> int:
    """512-px tiles of an image under OpenAI's high-detail rule."""
    if width <= 0 or height <= 0:
        return 8
    fit = min(1.0, 2048 / max(width, height))
    scaled_width, scaled_height = width * fit, height * fit
    shrink = min(1.0, 768 / min(scaled_width, scaled_height))
    return math.ceil(scaled_width * shrink / 512) * math.ceil(scaled_height * shrink / 512)


def _b64decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size_from_data_url(url: str) -> ImageSize | None:
    """(width, height) of a ``data:image/...;base64,`` URL, or None for other URLs."""
    if not url.startswith("data:"):
        return None
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        return None
    return image_size_from_bytes(_b64decode(payload))


def image_size_from_bytes(data: bytes) -> ImageSize | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header; None if unrecognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 < len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return width, height
            pos += 2 + length
    return None
