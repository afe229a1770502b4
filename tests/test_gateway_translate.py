"""Cross-family routing as callers meet it: the real openai SDK against an Anthropic deployment and
the real anthropic SDK against an OpenAI one, through a gateway process, fake providers upstream;
whole replies, streams and tool calls come back in the caller's API, and the ledger prices the
deployment actually called."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from gateway_helpers import GatewayProcess
from redis_servers import free_port

import llmthrottle as lt
from llmthrottle.testing import FakeProvider

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLAUDE, GPT = "claude-3-5-haiku-latest", "gpt-4o-mini"


def config_text(directory: Path, port: int, claude: FakeProvider, gpt: FakeProvider, broken: FakeProvider) -> str:
    def deployment(provider: str, model: str, upstream: FakeProvider, name: str) -> str:
        base = upstream.anthropic_base_url if provider == "anthropic" else upstream.openai_base_url
        return (
            f'{{provider = "{provider}", model = "{model}", base_url = "{base}", '
            f'api_key_env = "LT_UPSTREAM_KEY", name = "{name}"}}'
        )

    return f"""
[gateway]
listen = "127.0.0.1:{port}"
keys_db = "{directory}/keys.sqlite"
breaker_failures = 2
breaker_cooldown = 60

[tiers.pro]
requests = "1000/min"

[models.claude]
deployments = [{deployment("anthropic", CLAUDE, claude, "claude")}]

[models.gpt]
deployments = [{deployment("openai", GPT, gpt, "gpt")}]

[models.claude-cached]
cache_ttl = 300
deployments = [{deployment("anthropic", CLAUDE, claude, "claude")}]

[models.broken]
deployments = [{deployment("openai", GPT, broken, "broken-openai")}]

[models.mixed]
deployments = [{deployment("openai", GPT, broken, "broken-openai")}, {deployment("anthropic", CLAUDE, claude, "claude-backup")}]

[ledger]
path = "{directory}/ledger"

[state]
kind = "in-process"
"""


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeProvider, FakeProvider, FakeProvider]]:
    with FakeProvider() as claude, FakeProvider() as gpt, FakeProvider(error_rate=1.0) as broken:
        yield claude, gpt, broken


@pytest.fixture
def gateway(tmp_path: Path, upstreams: tuple[FakeProvider, FakeProvider, FakeProvider]) -> Iterator[GatewayProcess]:
    port = free_port()
    process = GatewayProcess(tmp_path, config_text(tmp_path, port, *upstreams), port)
    yield process
    process.stop()


def ledger_records(gateway: GatewayProcess) -> list[Any]:
    gateway.stop()
    with lt.Ledger(gateway.directory / "ledger") as ledger:
        return list(ledger.records())


def assert_priced_as_called(records: list[Any], provider: str, model: str) -> None:
    """Each record is the deployment's call: its provider and model, at its price."""
    for record in records:
        assert (record.provider, record.model, record.outcome) == (provider, model, "ok")
        usage = {"input_tokens": record.input_tokens, "output_tokens": record.output_tokens}
        assert record.input_tokens > 0 and record.output_tokens > 0
        assert record.cost_micros == lt.cost(model, usage, provider).total_micros


def test_the_openai_sdk_calls_an_anthropic_deployment(gateway: GatewayProcess, upstreams: Any) -> None:
    claude = upstreams[0]
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with gateway.openai(gateway.key(tenant="acme")) as client:
        whole = client.chat.completions.create(model="claude", messages=question, max_tokens=20, stop=["END"])
        assert whole.model == CLAUDE and whole.object == "chat.completion"
        assert whole.choices[0].message.content == " tok" * 16 and whole.choices[0].finish_reason == "stop"
        assert whole.usage is not None and whole.usage.completion_tokens == 16 and whole.usage.prompt_tokens > 0
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + 16

        chunks = list(
            client.chat.completions.create(
                model="claude", messages=question, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " tok" * 16
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16  # type: ignore[union-attr]
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]
        plain = list(client.chat.completions.create(model="claude", messages=question, stream=True))
        assert all(c.choices and c.usage is None for c in plain)  # no usage chunk unless asked for
    assert claude.counters.requests == 3
    records = ledger_records(gateway)
    assert len(records) == 3
    assert_priced_as_called(records, "anthropic", CLAUDE)
    assert {r.tags["deployment"] for r in records} == {"claude"}
    assert sum(r.input_tokens for r in records) == claude.counters.input_tokens


def test_tool_calls_cross_to_an_anthropic_deployment_and_back(gateway: GatewayProcess) -> None:
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with gateway.openai(gateway.key(tenant="acme")) as client:
        reply = client.chat.completions.create(model="claude", messages=question, tools=[WEATHER], max_tokens=50)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "tok"}  # type: ignore[union-attr]

        streamed = list(client.chat.completions.create(model="claude", messages=question, tools=[WEATHER], stream=True))
        deltas = [t for c in streamed if c.choices for t in c.choices[0].delta.tool_calls or ()]
        assert deltas[0].id and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "tok"}  # type: ignore[union-attr]
        assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"

        # The tool's result goes back as a tool_result; the model answers in text.
        answer = client.chat.completions.create(
            model="claude",
            messages=[
                *question,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
            tools=[WEATHER],
        )
        assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


def test_the_anthropic_sdk_calls_an_openai_deployment(gateway: GatewayProcess, upstreams: Any) -> None:
    gpt = upstreams[1]
    question = [{"role": "user", "content": "hi"}]
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key(tenant="acme"), max_retries=0) as client:
        whole = client.messages.create(model="gpt", system="Be brief.", max_tokens=20, messages=question)
        assert whole.model == GPT and whole.type == "message" and whole.stop_reason == "end_turn"
        assert [b.type for b in whole.content] == ["text"] and whole.content[0].text == " tok" * 16  # type: ignore[union-attr]
        assert whole.usage.output_tokens == 16 and whole.usage.input_tokens > 0

        with client.messages.stream(model="gpt", system="Be brief.", max_tokens=20, messages=question) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
        assert "".join(texts) == " tok" * 16 and final.stop_reason == "end_turn"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens, 16)

        tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]  # type: ignore[index]
        called = client.messages.create(model="gpt", max_tokens=50, messages=question, tools=tools)  # type: ignore[arg-type]
        assert called.stop_reason == "tool_use"
        use = called.content[0]
        assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "tok"}
        with client.messages.stream(model="gpt", max_tokens=50, messages=question, tools=tools) as stream:  # type: ignore[arg-type]
            streamed_use = stream.get_final_message()
        assert streamed_use.stop_reason == "tool_use" and streamed_use.content[0].input == {"city": "tok"}  # type: ignore[union-attr]
        answered = client.messages.create(
            model="gpt",
            max_tokens=50,
            tools=tools,  # type: ignore[arg-type]
            messages=[
                *question,  # type: ignore[list-item]
                {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
            ],
        )
        assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"
    assert gpt.counters.requests == 5
    records = ledger_records(gateway)
    assert_priced_as_called(records, "openai", GPT)
    assert sum(r.input_tokens for r in records) == gpt.counters.input_tokens


def test_what_cannot_be_translated_is_a_400_in_the_callers_shape(gateway: GatewayProcess, upstreams: Any) -> None:
    key = gateway.key(tenant="acme")
    question = [{"role": "user", "content": "hi"}]
    with gateway.openai(key) as client:
        with pytest.raises(openai.BadRequestError, match=r"anthropic deployment 'claude'.*\bn = 2"):
            client.chat.completions.create(model="claude", messages=question, n=2)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            client.chat.completions.create(model="claude", messages=question, logprobs=True)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.chat.completions.create(model="claude", messages=question, temperature=1.5)  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError, match="top_k"):
            claude.messages.create(model="gpt", max_tokens=5, messages=question, extra_body={"top_k": 5})  # type: ignore[arg-type]
        document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
        with pytest.raises(anthropic.BadRequestError, match="'document' block"):
            claude.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": [document]}])  # type: ignore[list-item]
    assert upstreams[0].counters.requests == upstreams[1].counters.requests == 0


def test_failover_from_a_failing_openai_deployment_to_an_anthropic_one(gateway: GatewayProcess, upstreams: Any) -> None:
    claude, _, broken = upstreams
    key = gateway.key(tenant="acme")
    question = [{"role": "user", "content": "hi"}]
    with gateway.openai(key) as client:
        assert client.chat.completions.create(model="mixed", messages=question).model == CLAUDE
        streamed = list(client.chat.completions.create(model="mixed", messages=question, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == " tok" * 16
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as messages:
        # The Anthropic caller's first deployment is the (translated) OpenAI one; it fails too.
        assert messages.messages.create(model="mixed", max_tokens=20, messages=question).model == CLAUDE  # type: ignore[arg-type]
    assert broken.counters.requests == 2  # the breaker opened after two failures
    assert claude.counters.requests == 3
    records = ledger_records(gateway)
    assert sorted((r.tags["deployment"], r.provider, r.outcome) for r in records) == [
        ("broken-openai", "openai", "error"),
        ("broken-openai", "openai", "error"),
        ("claude-backup", "anthropic", "ok"),
        ("claude-backup", "anthropic", "ok"),
        ("claude-backup", "anthropic", "ok"),
    ]
    assert_priced_as_called([r for r in records if r.outcome == "ok"], "anthropic", CLAUDE)


def test_a_cached_reply_of_an_anthropic_deployment_answers_either_api(gateway: GatewayProcess, upstreams: Any) -> None:
    claude = upstreams[0]
    key = gateway.key(tenant="acme")
    question = [{"role": "user", "content": "what is the capital of France?"}]
    with gateway.openai(key) as client:
        first = client.chat.completions.with_raw_response.create(
            model="claude-cached", messages=question, max_tokens=20
        )
        again = client.chat.completions.with_raw_response.create(
            model="claude-cached", messages=question, max_tokens=20
        )
    assert again.headers.get("x-llmthrottle-cache") == "hit"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content == " tok" * 16
    # The cache holds the deployment's own reply: an Anthropic caller's identical request is a hit too.
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as messages:
        raw = messages.messages.with_raw_response.create(model="claude-cached", max_tokens=20, messages=question)  # type: ignore[arg-type]
    assert raw.headers.get("x-llmthrottle-cache") == "hit" and raw.parse().content[0].text == " tok" * 16  # type: ignore[union-attr]
    assert claude.counters.requests == 1


def test_an_upstream_error_comes_back_in_the_callers_shape(gateway: GatewayProcess) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key(tenant="acme"), max_retries=0) as client:
        with pytest.raises(anthropic.InternalServerError, match="The server had an error") as failed:
            client.messages.create(model="broken", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The server had an error while processing your request."},
    }
