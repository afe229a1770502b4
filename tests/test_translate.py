"""The gateway's translation between the OpenAI and Anthropic APIs, as pure functions: requests,
whole replies, usage, errors and streams, with round trips through both directions."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmthrottle as lt
from llmthrottle.gateway.translate import (
    DEFAULT_MAX_TOKENS,
    Translation,
    Untranslatable,
    anthropic_message,
    anthropic_to_openai,
    openai_completion,
    openai_to_anthropic,
)
from llmthrottle.gateway.translate.reply import anthropic_usage, error_as, openai_usage
from llmthrottle.pricing.usage import normalize_usage

texts = st.text(min_size=1, max_size=40)
arguments = st.dictionaries(
    st.text(min_size=1, max_size=8), st.one_of(st.integers(-5, 5), st.text(max_size=8), st.booleans()), max_size=3
)
ids = st.from_regex(r"[a-zA-Z0-9_]{4,12}", fullmatch=True)


@st.composite
def openai_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """System messages first, then user and assistant turns; assistants may call tools, whose
    results follow as tool messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": t} for t in draw(st.lists(texts, max_size=2))]
    for _ in range(draw(st.integers(1, 5))):
        messages.append({"role": "user", "content": draw(texts)})
        calls = draw(st.lists(st.tuples(ids, texts, arguments), max_size=2, unique_by=lambda c: c[0]))
        if not calls:
            messages.append({"role": "assistant", "content": draw(texts)})
            continue
        messages.append(
            {
                "role": "assistant",
                "content": draw(st.one_of(st.none(), texts)),
                "tool_calls": [
                    {
                        "id": ident,
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": json.dumps(args, separators=(",", ":"), ensure_ascii=False),
                        },
                    }
                    for ident, name, args in calls
                ],
            }
        )
        messages.extend({"role": "tool", "tool_call_id": ident, "content": draw(texts)} for ident, _, _ in calls)
    return messages


@settings(max_examples=150, deadline=None)
@given(openai_conversations())
def test_an_openai_conversation_survives_a_round_trip_through_the_anthropic_api(messages: list[dict[str, Any]]) -> None:
    body = {"model": "m", "messages": messages, "max_completion_tokens": 100}
    there = openai_to_anthropic(body)
    assert all(turn["role"] in ("user", "assistant") for turn in there["messages"])
    back = anthropic_to_openai(there)
    assert back["messages"] == messages
    assert back["max_completion_tokens"] == 100


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 5))):
        turns.append({"role": "user", "content": draw(texts)})
        uses = draw(st.lists(st.tuples(ids, texts, arguments), max_size=2, unique_by=lambda c: c[0]))
        if not uses:
            turns.append({"role": "assistant", "content": draw(texts)})
            continue
        turns.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": draw(texts)}]
                + [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in uses],
            }
        )
        turns.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": i, "content": draw(texts)} for i, _, _ in uses],
            }
        )
    body: dict[str, Any] = {"model": "m", "max_tokens": draw(st.integers(1, 10_000)), "messages": turns}
    system = draw(st.one_of(st.none(), texts))
    if system is not None:
        body["system"] = system
    return body


@settings(max_examples=150, deadline=None)
@given(anthropic_requests())
def test_an_anthropic_request_survives_a_round_trip_through_the_openai_api(body: dict[str, Any]) -> None:
    back = openai_to_anthropic(anthropic_to_openai(body))
    assert back == body


def test_system_messages_roles_and_limits_map_to_the_anthropic_fields() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "one"},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "two"}]},
        ],
        "stop": "END",
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
        "seed": 7,
        "stream_options": {"include_usage": True},
        "stream": True,
    }
    there = openai_to_anthropic(body)
    assert there == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "system": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        "max_tokens": DEFAULT_MAX_TOKENS,  # Anthropic requires one
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "stream": True,
        "metadata": {"user_id": "u-1"},
    }
    assert openai_to_anthropic({**body, "max_tokens": 50, "max_completion_tokens": 70})["max_tokens"] == 70
    assert openai_to_anthropic({**body, "max_tokens": 50})["max_tokens"] == 50
    back = anthropic_to_openai(there)
    assert back["stream_options"] == {"include_usage": True}  # the usage the stream translation needs
    assert (back["stop"], back["user"], back["max_completion_tokens"]) == (["END"], "u-1", DEFAULT_MAX_TOKENS)


def test_images_and_tool_choices_cross_both_ways() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    there = openai_to_anthropic({"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert there["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    back = anthropic_to_openai(there)["messages"][0]["content"]
    assert back[1] == parts[1] and back[2] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for openai_choice, anthropic_choice in (
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ):
        request = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
        there = openai_to_anthropic({**request, "tool_choice": openai_choice})
        assert there["tool_choice"] == anthropic_choice
        assert there["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
        assert anthropic_to_openai(there)["tool_choice"] == openai_choice
    serial = openai_to_anthropic({**request, "parallel_tool_calls": False})
    assert serial["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert anthropic_to_openai(serial)["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 3}, "n = 3"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 1.2}, "maximum of 1"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "'function' message"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
            "image",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "only function tools"),
        ({"messages": []}, "non-empty"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "JSON object",
        ),
    ],
)
def test_what_the_anthropic_api_cannot_say_is_refused_by_name(body: dict[str, Any], message: str) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(Untranslatable, match=message) as refused:
        openai_to_anthropic(request)
    assert isinstance(refused.value, lt.LlmthrottleError) and isinstance(refused.value, ValueError)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "client tools"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document' block"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role must be user or assistant"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)
def test_what_the_openai_api_cannot_say_is_refused_by_name(body: dict[str, Any], message: str) -> None:
    request = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(Untranslatable, match=message):
        anthropic_to_openai(request)


def test_usage_keeps_every_token_in_its_priced_bucket_across_apis() -> None:
    anthropic = {
        "input_tokens": 100,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 20,
        "output_tokens": 7,
    }
    as_openai = openai_usage(anthropic)
    assert as_openai == {
        "prompt_tokens": 150,  # OpenAI's prompt count includes cache reads and writes
        "completion_tokens": 7,
        "total_tokens": 157,
        "prompt_tokens_details": {"cached_tokens": 30},
    }
    openai = {"prompt_tokens": 150, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 30}}
    assert anthropic_usage(openai) == {
        "input_tokens": 120,  # Anthropic's input count excludes cache reads
        "output_tokens": 7,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 0,
    }
    # What a caller is told it used is what the deployment counted, token for token.
    assert normalize_usage(as_openai, "openai").prompt_tokens == normalize_usage(anthropic, "anthropic").prompt_tokens
    with pytest.raises(Untranslatable, match="usage"):
        openai_usage({"input_tokens": -1})


def test_whole_replies_and_stop_reasons_cross_both_ways() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    completion = openai_completion(message)
    choice = completion["choices"][0]
    assert (completion["id"], completion["model"], choice["finish_reason"]) == ("msg_1", "claude-x", "tool_calls")
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"city":"Paris"}'}}
    ]
    back = anthropic_message(completion)
    assert (back["content"], back["stop_reason"], back["model"]) == (message["content"], "tool_use", "claude-x")
    assert back["usage"]["input_tokens"] == 10 and back["usage"]["output_tokens"] == 5
    for stop, finish in (
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ):
        assert (
            openai_completion({**message, "content": [], "stop_reason": stop})["choices"][0]["finish_reason"] == finish
        )
    for finish, stop in (("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")):
        assert (
            anthropic_message({**completion, "choices": [{**choice, "finish_reason": finish}]})["stop_reason"] == stop
        )
    broken = {
        **completion,
        "choices": [{**choice, "message": {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}}],
    }
    with pytest.raises(Untranslatable, match="not valid JSON"):
        anthropic_message(broken)


def test_error_bodies_come_back_in_the_callers_shape() -> None:
    upstream = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    as_openai = json.loads(error_as("openai", 529, upstream))
    assert as_openai["error"]["message"] == "Overloaded" and as_openai["error"]["type"] == "server_error"
    openai_error = json.dumps(
        {"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}}
    )
    as_anthropic = json.loads(error_as("anthropic", 429, openai_error.encode()))
    assert as_anthropic == {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}
    assert b"upstream error 502" in error_as("anthropic", 502, b"")


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def anthropic_stream(text_pieces: list[str], tool_arguments: list[str] | None) -> bytes:
    events = [
        _sse(
            "message_start",
            {
                "message": {
                    "id": "msg_1",
                    "model": "claude-x",
                    "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 4},
                }
            },
        ),
        _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _sse("ping", {}),
        *(_sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}}) for t in text_pieces),
        _sse("content_block_stop", {"index": 0}),
    ]
    if tool_arguments is not None:
        events.append(
            _sse(
                "content_block_start",
                {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}},
            )
        )
        events.extend(
            _sse("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}})
            for piece in tool_arguments
        )
        events.append(_sse("content_block_stop", {"index": 1}))
    stop = "tool_use" if tool_arguments is not None else "end_turn"
    events.append(_sse("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": 9}}))
    events.append(_sse("message_stop", {}))
    return b"".join(events)


def _timeless(stream: bytes) -> bytes:
    """An OpenAI stream without its `created` seconds, which two translations made a moment
    apart may read differently."""
    return re.sub(rb'"created":\d+', b'"created":0', stream)


def _fed_in_pieces(translator: Any, data: bytes, cuts: list[int]) -> bytes:
    out, start = b"", 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += translator.feed(data[start:cut])
        start = cut
    return out + translator.finish()


def _openai_chunks(data: bytes) -> list[dict[str, Any]]:
    events = [e[len(b"data: ") :] for e in data.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=10), max_size=6),
    st.one_of(st.none(), arguments.map(lambda a: json.dumps(a))),
    st.lists(st.integers(0, 3000), max_size=8),
    st.booleans(),
)
def test_an_anthropic_stream_becomes_openai_chunks_however_it_is_split(
    pieces: list[str], tool_json: str | None, cuts: list[int], include_usage: bool
) -> None:
    tool_pieces = None if tool_json is None else [tool_json[: len(tool_json) // 2], tool_json[len(tool_json) // 2 :]]
    data = anthropic_stream(pieces, tool_pieces)
    translation = Translation("openai", "anthropic", include_usage)
    whole = translation.stream().feed(data)
    pieced = _fed_in_pieces(translation.stream(), data, [c % (len(data) + 1) for c in cuts])
    assert _timeless(pieced) == _timeless(whole)
    chunks = _openai_chunks(whole)
    with_choices = [c for c in chunks if c["choices"]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_1" for c in chunks)
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices) == "".join(pieces)
    calls = [t for c in with_choices for t in c["choices"][0]["delta"].get("tool_calls") or ()]
    if tool_json is None:
        assert calls == [] and with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        assert calls[0]["id"] == "toolu_1" and {c["index"] for c in calls} == {0}
        assert json.loads("".join(c["function"]["arguments"] for c in calls)) == json.loads(tool_json)
        assert with_choices[-1]["choices"][0]["finish_reason"] == "tool_calls"
    usage = [c["usage"] for c in chunks if not c["choices"]]
    expected = {
        "prompt_tokens": 16,
        "completion_tokens": 9,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert usage == ([expected] if include_usage else [])
    # And on to Anthropic again: the same text, tool input, stop reason and usage.
    if include_usage:
        again = Translation("anthropic", "openai").stream().feed(whole)
        events = [json.loads(line[6:]) for line in again.split(b"\n") if line.startswith(b"data: ")]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        partial = "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta")
        assert text == "".join(pieces) and (json.loads(partial) if partial else None) == (
            json.loads(tool_json) if tool_json else None
        )
        assert events[-2]["delta"]["stop_reason"] == ("tool_use" if tool_json else "end_turn")
        assert events[-2]["usage"] == {
            "input_tokens": 12,
            "output_tokens": 9,
            "cache_read_input_tokens": 4,
            "cache_creation_input_tokens": 0,
        }
        starts = [e for e in events if e["type"] == "content_block_start"]
        stops = [e for e in events if e["type"] == "content_block_stop"]
        assert [s["index"] for s in starts] == [s["index"] for s in stops] == list(range(len(starts)))


def test_an_upstream_error_mid_stream_is_written_as_the_caller_api_writes_one() -> None:
    error = _sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    out = Translation("openai", "anthropic").stream().feed(error)
    assert json.loads(out[len(b"data: ") :]) == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "code": None}
    }
    back = Translation("anthropic", "openai").stream().feed(b'data: {"error": {"message": "boom"}}\n\n')
    name, data = back.split(b"\n")[:2]
    assert name == b"event: error"
    assert json.loads(data[len(b"data: ") :]) == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=16) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "role",
                    "content",
                    "text",
                    "name",
                    "id",
                    "input",
                    "function",
                    "arguments",
                    "tool_calls",
                    "tool_call_id",
                    "tool_use_id",
                    "image_url",
                    "url",
                    "source",
                    "parameters",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop",
        "stop_sequences",
        "max_tokens",
        "temperature",
        "metadata",
        "user",
        "n",
        "stream",
        "parallel_tool_calls",
        "response_format",
        "top_k",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(
    fields,
    st.one_of(st.integers(-3, 3), st.text(max_size=3), json_values),
    st.lists(json_values, max_size=3),
    st.sampled_from(["openai", "anthropic"]),
)
def test_any_request_is_translated_or_refused_with_untranslatable(
    field: str, value: Any, turns: list[Any], caller: str
) -> None:
    """Whatever a caller sends (one field at a time, and turns of any shape), the translation
    answers with a request or refuses it by name: never another exception (a 500)."""
    translate = openai_to_anthropic if caller == "openai" else anthropic_to_openai
    hello = {"role": "user", "content": "hi"}
    for body in ({"messages": [hello], field: value}, {"messages": [hello, *turns]}):
        try:
            out = translate({"model": "m", "max_tokens": 5, **body})
        except Untranslatable:
            continue
        assert isinstance(out, dict) and out["model"] == "m"
        json.dumps(out)  # what is sent is JSON


@settings(max_examples=500, deadline=None)
@given(json_values, st.sampled_from(["openai", "anthropic"]))
def test_any_reply_or_stream_is_translated_or_refused_never_crashes(reply: Any, caller: str) -> None:
    """A deployment's reply of any shape becomes the caller's, or a 502 (Untranslatable); its
    stream's events of any shape are passed or dropped."""
    upstream = "anthropic" if caller == "openai" else "openai"
    translation = Translation(caller, upstream, include_usage=True)  # type: ignore[arg-type]
    data = json.dumps(reply).encode()
    try:
        json.loads(translation.reply(data))
    except Untranslatable:
        pass
    stream = translation.stream()
    kinds = ["message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop", "error"]
    events = [json.dumps({"type": kind, **(reply if isinstance(reply, dict) else {})}) for kind in kinds]
    events += [json.dumps(reply), json.dumps({"choices": [reply], "usage": reply}), "[DONE]"]
    out = stream.feed("".join(f"data: {event}\n\n" for event in events).encode()) + stream.finish()
    for line in out.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            json.loads(line[6:])
