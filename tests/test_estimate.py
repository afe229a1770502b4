"""Request-body estimates follow the published counting rules; malformed bodies name the field."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokens_reference import reference_encoding

import llmthrottle as lt
from llmthrottle import InvalidRequestBody
from llmthrottle.request_estimate import estimate_counts, image_size_from_bytes, openai_tiles

# The worked example of the OpenAI cookbook "How to count tokens with tiktoken".
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


def cookbook_num_tokens_from_messages(messages: list[dict[str, Any]], encoding_name: str) -> int:
    """The cookbook's `num_tokens_from_messages`, on tiktoken (the oracle)."""
    encoding = reference_encoding(encoding_name)
    num_tokens = 0
    for message in messages:
        num_tokens += 3
        for key, value in message.items():
            num_tokens += len(encoding.encode_ordinary(value))
            if key == "name":
                num_tokens += 1
    return num_tokens + 3


@pytest.mark.parametrize(
    ("model", "encoding", "expected"),
    [
        ("gpt-4o", "o200k_base", 124),
        ("gpt-4o-mini", "o200k_base", 124),
        ("gpt-4", "cl100k_base", 129),
        ("gpt-3.5-turbo", "cl100k_base", 129),
    ],
)
def test_cookbook_example_counts_as_the_cookbook_rule(model: str, encoding: str, expected: int) -> None:
    assert cookbook_num_tokens_from_messages(COOKBOOK_MESSAGES, encoding) == expected
    result = lt.estimate({"model": model, "messages": COOKBOOK_MESSAGES, "max_tokens": 100})
    assert result.input_tokens == expected
    assert result.max_output_tokens == 100
    assert result.total == expected + 100
    assert result.encoding == encoding


_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)},
    optional={"name": st.text(alphabet="abcdefghij_", min_size=1, max_size=10)},
)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(_MESSAGE, max_size=6))
def test_chat_estimate_equals_the_cookbook_rule_on_random_messages(messages: list[dict[str, Any]]) -> None:
    result = lt.estimate({"model": "gpt-4o", "messages": messages})
    assert result.input_tokens == cookbook_num_tokens_from_messages(messages, "o200k_base")


def test_output_reservation_prefers_max_completion_tokens_then_the_default() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert lt.estimate(body).max_output_tokens == 4096
    assert lt.estimate(body, default_max_output_tokens=50).max_output_tokens == 50
    assert lt.estimate({**body, "max_tokens": 7}).max_output_tokens == 7
    assert lt.estimate({**body, "max_tokens": 7, "max_completion_tokens": 9}).max_output_tokens == 9
    with pytest.raises(InvalidRequestBody, match="max_tokens"):
        lt.estimate({**body, "max_tokens": -1})


def test_content_parts_count_their_text() -> None:
    plain = lt.estimate({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]})
    parts = lt.estimate(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}
    )
    assert parts.input_tokens == plain.input_tokens


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _image_body(url: str, detail: str | None = None, model: str = "gpt-4o") -> dict[str, Any]:
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"model": model, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]}


def _image_tokens(body: dict[str, Any], **kwargs: Any) -> int:
    text_only = {"model": body["model"], "messages": [{"role": "user", "content": []}]}
    return lt.estimate(body, **kwargs).input_tokens - lt.estimate(text_only).input_tokens


def test_images_follow_the_openai_tile_rule() -> None:
    # The worked examples of OpenAI's vision guide.
    assert openai_tiles(1024, 1024) == 4  # -> 768x768: 4 tiles, 765 tokens
    assert openai_tiles(2048, 4096) == 6  # -> 1024x2048 -> 768x1536: 6 tiles, 1105 tokens
    assert _image_tokens(_image_body(_data_url(_png(1024, 1024)))) == 765
    assert _image_tokens(_image_body(_data_url(_png(2048, 4096)), "high")) == 1105
    assert _image_tokens(_image_body(_data_url(_png(4096, 8192)), "low")) == 85
    assert _image_tokens(_image_body("https://example.invalid/cat.png")) == 1445  # unknown: worst case
    assert _image_tokens(_image_body("https://x/cat.png"), image_size=lambda url: (512, 512)) == 255
    assert _image_tokens(_image_body(_data_url(_png(1024, 1024)), model="gpt-4o-mini")) == 2833 + 4 * 5667


def test_image_headers_of_every_supported_format_are_read() -> None:
    assert image_size_from_bytes(_png(640, 480)) == (640, 480)
    assert image_size_from_bytes(b"GIF89a" + struct.pack("<HH", 31, 17) + b"\0" * 8) == (31, 17)
    vp8x = (
        b"RIFF" + b"\0\0\0\0" + b"WEBP" + b"VP8X" + b"\0" * 8 + (99).to_bytes(3, "little") + (49).to_bytes(3, "little")
    )
    assert image_size_from_bytes(vp8x) == (100, 50)
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 300, 400) + b"\0" * 12
    assert image_size_from_bytes(jpeg) == (400, 300)
    assert image_size_from_bytes(b"not an image") is None


def test_tools_use_the_cookbook_function_approximation() -> None:
    enc = reference_encoding("o200k_base")
    tool = {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "description": "The unit.", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}
    n = lambda s: len(enc.encode_ordinary(s))  # noqa: E731
    expected_tools = (
        7
        + n("get_current_weather:Get the current weather in a given location")
        + 3
        + 3
        + n("location:string:The city and state, e.g. San Francisco, CA")
        + 3
        - 3
        + 3
        + n("celsius")
        + 3
        + n("fahrenheit")
        + n("unit:string:The unit")
        + 12
    )
    with_tools = lt.estimate({**body, "tools": [tool]}).input_tokens
    assert with_tools - lt.estimate(body).input_tokens == expected_tools


def test_responses_embeddings_and_completions_bodies() -> None:
    enc = reference_encoding("o200k_base")
    n = lambda s: len(enc.encode_ordinary(s))  # noqa: E731
    result = lt.estimate({"model": "gpt-4.1", "instructions": "Be brief.", "input": "Hello!", "max_output_tokens": 64})
    assert result.input_tokens == 3 + (3 + n("system") + n("Be brief.")) + (3 + n("user") + n("Hello!"))
    assert result.max_output_tokens == 64
    listed = lt.estimate(
        {"model": "gpt-4.1", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}]}
    )
    assert listed.input_tokens == 3 + 3 + n("user") + n("Hello!")

    cl = reference_encoding("cl100k_base")
    emb = lt.estimate({"model": "text-embedding-3-small", "input": ["one two", "three"]})
    assert emb.input_tokens == len(cl.encode_ordinary("one two")) + len(cl.encode_ordinary("three"))
    assert emb.max_output_tokens == 0
    assert lt.estimate({"model": "text-embedding-3-small", "input": [1, 2, 3]}).input_tokens == 3

    assert lt.estimate({"model": "gpt-3.5-turbo", "prompt": "Say hi", "max_tokens": 5}).input_tokens == len(
        cl.encode_ordinary("Say hi")
    )


def test_anthropic_messages_are_approximated_with_o200k() -> None:
    enc = reference_encoding("o200k_base")
    n = lambda s: len(enc.encode_ordinary(s))  # noqa: E731
    body = {
        "model": "claude-sonnet-4-5",
        "system": "You are terse.",
        "max_tokens": 256,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ],
    }
    result = lt.estimate(body, provider="anthropic")
    assert result.input_tokens == 3 + (3 + n("You are terse.")) + (3 + n("user") + n("Hi")) + (
        3 + n("assistant") + n("Hello")
    )
    assert result.max_output_tokens == 256
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(_png(1000, 750)).decode()},
    }
    with_image = lt.estimate({**body, "messages": [{"role": "user", "content": [image]}]}, provider="anthropic")
    assert with_image.input_tokens == 3 + (3 + n("You are terse.")) + 3 + n("user") + 1000


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages must be a list"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}, "b"]}, r"messages\[1\]"),
        ({"model": "gpt-4o", "messages": [{"content": "a"}]}, r"messages\[0\]\.role"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, r"messages\[0\]\.content"),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "user", "content": "y"},
                    {"role": "user", "content": ["text"]},
                ],
            },
            r"messages\[2\]\.content\[0\]",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            r"messages\[0\]\.content\[0\]\.text",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            r"messages\[0\]\.content\[0\]\.type",
        ),
        ({"model": "gpt-4o", "messages": [], "tools": [{"function": {"name": 1}}]}, r"tools\[0\]\.function\.name"),
        ({"model": "text-embedding-3-small", "input": ["ok", None]}, r"input\[1\]"),
    ],
)
def test_malformed_bodies_name_the_offending_field(body: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequestBody, match=path):
        lt.estimate(body)


def test_other_bad_arguments_are_clear_errors() -> None:
    assert issubclass(InvalidRequestBody, ValueError)
    with pytest.raises(InvalidRequestBody, match="mapping"):
        lt.estimate(["not", "a", "body"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestBody, match="model"):
        lt.estimate({"messages": []})
    with pytest.raises(lt.ConfigError, match="fallback"):
        lt.estimate({"model": "my-local-llm", "messages": []})
    assert lt.estimate({"model": "my-local-llm", "messages": []}, fallback="cl100k_base").input_tokens == 3
    with pytest.raises(ValueError, match="provider"):
        lt.estimate({"model": "gpt-4o", "messages": []}, provider="gemini")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestBody, match=r"messages\[0\]\.content"):
        lt.estimate({"messages": [{"role": "user", "content": 1}]}, provider="anthropic")


def test_an_anthropic_body_is_counted_as_anthropic_without_being_told() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert lt.estimate(body) == lt.estimate(body, "anthropic")
    assert lt.estimate(body).max_output_tokens == 100
    # Anthropic publishes no tokenizer: the count says it is approximate; an OpenAI count
    # is exact unless the fast estimator made it.
    assert lt.estimate(body).approximate is True
    openai_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert lt.estimate(openai_body).approximate is False
    assert lt.estimate(openai_body, exact=False).approximate is True


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": _TEXT}), max_size=6
    ),
    reserve=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    system=st.one_of(st.none(), _TEXT),
    provider=st.sampled_from(["openai", "anthropic"]),
)
def test_a_plain_body_is_counted_natively_as_the_python_walk_counts_it(
    messages: list[dict[str, str]], reserve: int | None, system: str | None, provider: str
) -> None:
    """String messages without tools are counted in one native call; the Python walk over the
    same body (given as a read-only mapping, which the native path declines) is its oracle."""
    import types

    model = "gpt-4o" if provider == "openai" else "claude-sonnet-4-5"
    body: dict[str, Any] = {"model": model, "messages": messages}
    if reserve is not None:
        body["max_tokens"] = reserve
    if system is not None and provider == "anthropic":
        body["system"] = system
    native = lt.get_encoding("o200k_base").plain_chat_estimate(
        body, 3, 3, "system" if provider == "anthropic" else None, ("max_tokens",), 4096
    )
    assert native is not None
    walked = lt.estimate(types.MappingProxyType(body), provider)  # type: ignore[arg-type]
    assert lt.estimate(body, provider) == walked
    assert native == (walked.input_tokens, walked.max_output_tokens)
    # What a wrapped call reserves takes the same native count.
    assert estimate_counts(body, provider, "chat" if provider == "openai" else None) == native


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi", "name": "ann"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": True},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.0},
        {"messages": [{"role": "user", "content": "\ud800"}]},
        {"messages": "hi"},
        {"prompt": "hi"},
    ],
)
def test_any_other_body_is_left_to_the_python_walk(body: dict[str, Any]) -> None:
    counted = lt.get_encoding("o200k_base").plain_chat_estimate(
        body, 3, 3, None, ("max_completion_tokens", "max_tokens"), 4096
    )
    assert counted is None
    # What a wrapped call reserves is then the walk's answer, or its error.
    body = {"model": "gpt-4o", **body}
    try:
        walked = lt.estimate(body, "openai", endpoint="chat")
    except ValueError as error:
        with pytest.raises(type(error)):
            estimate_counts(body, "openai", "chat")
    else:
        assert estimate_counts(body, "openai", "chat") == (walked.input_tokens, walked.max_output_tokens)
