"""Azure OpenAI through the provider layer: the real `openai.AzureOpenAI` and `AsyncAzureOpenAI`
over real HTTP against the fake provider's Azure endpoints. Limits are a deployment's, requests
counted per 10 seconds; each call is priced as the model Azure says answered, and recorded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from provider_helpers import records

import llmthrottle as lt
from llmthrottle.providers.headers import announced_limits, parse_reset_duration
from llmthrottle.providers.learned import LearnedLimits
from llmthrottle.providers.protocol import endpoint_of
from llmthrottle.testing import FakeProvider

openai = pytest.importorskip("openai")

VERSION = "2024-10-21"
SECRET = "azure-secret-key-0123456789"
HELLO = [{"role": "user", "content": "hello there"}]
# What each deployment runs, as Azure names it in its replies.
DEPLOYMENTS = {"chat-prod": "gpt-4o-mini-2024-07-18", "embed": "text-embedding-3-small", "gpt-4o": "gpt-4o-2024-08-06"}


def guard_for(ledger: Any) -> Any:
    return lt.Guard(lt.Limiter({"requests": "1000/s"}), ledger=ledger)


def azure(provider: FakeProvider, **options: Any) -> Any:
    options.setdefault("api_key", SECRET)
    return openai.AzureOpenAI(azure_endpoint=provider.azure_endpoint, api_version=VERSION, **options)


def test_a_chat_call_is_priced_as_the_model_azure_names_and_recorded(
    ledger: Any, opened: list[Any], tmp_path: Path
) -> None:
    with FakeProvider(azure_deployments=DEPLOYMENTS, azure_api_key=SECRET) as provider:
        client = lt.wrap(azure(provider), guard=guard_for(ledger), model_of={"chat-prod": "gpt-4o-mini"})
        opened.append(client)
        assert isinstance(client, openai.AzureOpenAI)
        with lt.context(user="42"), lt.calls() as made:
            reply = client.chat.completions.create(model="chat-prod", messages=HELLO, max_tokens=50)
        # A client bound to one deployment: its path names it, the body names the model it runs.
        bound = lt.wrap(azure(provider, azure_deployment="gpt-4o"), guard=guard_for(ledger))
        opened.append(bound)
        other = bound.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=20)
        assert provider.counters.requests == 2
    first, second = records(ledger)
    for record, answer, deployment in ((first, reply, "chat-prod"), (second, other, "gpt-4o")):
        usage = answer.usage.model_dump()
        assert record.model == answer.model == DEPLOYMENTS[deployment]  # what Azure says answered
        assert record.cost_micros == lt.cost(answer.model, usage).total_micros > 0
        assert (record.input_tokens, record.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert (record.outcome, record.tags["azure_deployment"], record.tags["attempts"]) == ("ok", deployment, 1)
    assert first.user == "42"
    assert [(c.model, c.cost_micros) for c in made] == [(reply.model, first.cost_micros)]
    # The api-key is nowhere in what llmthrottle wrote.
    written = b"".join(path.read_bytes() for path in (tmp_path / "ledger").rglob("*") if path.is_file())
    assert written and SECRET.encode() not in written
    assert SECRET not in repr(first) + repr(second) + repr(made)


def test_a_stream_is_read_for_its_usage_without_the_caller_seeing_the_usage_chunk(
    ledger: Any, opened: list[Any]
) -> None:
    with FakeProvider(output_tokens=7, azure_deployments=DEPLOYMENTS) as provider:
        client = lt.wrap(azure(provider), guard=guard_for(ledger), model_of={"chat-prod": "gpt-4o-mini"})
        opened.append(client)
        chunks = list(client.chat.completions.create(model="chat-prod", messages=HELLO, stream=True))
        asked = list(
            client.chat.completions.create(
                model="chat-prod", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
    assert all(chunk.usage is None for chunk in chunks)  # the usage chunk llmthrottle asked for is hidden
    assert chunks[0].choices == [] and chunks[0].model == ""  # Azure's prompt-filter chunk passes as sent
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " tok" * 7
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 7  # asked for: kept
    first, second = records(ledger)
    for record in (first, second):
        assert (record.outcome, record.output_tokens, record.model) == ("ok", 7, DEPLOYMENTS["chat-prod"])
        usage = {"prompt_tokens": record.input_tokens, "completion_tokens": 7}
        assert record.cost_micros == lt.cost(DEPLOYMENTS["chat-prod"], usage).total_micros
        assert record.tags["ttft_s"] >= 0


def test_embeddings_and_responses_are_priced_and_recorded(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(output_tokens=6, azure_deployments=DEPLOYMENTS) as provider:
        client = lt.wrap(
            azure(provider),
            guard=guard_for(ledger),
            model_of={"embed": "text-embedding-3-small", "chat-prod": "gpt-4o-mini"},
        )
        opened.append(client)
        embedded = client.embeddings.create(model="embed", input=["one", "two"])
        response = client.responses.create(model="chat-prod", input="hello there", max_output_tokens=50)
    assert len(embedded.data) == 2
    first, second = records(ledger)
    assert (first.model, first.input_tokens, first.tags["azure_deployment"]) == (
        "text-embedding-3-small",
        embedded.usage.prompt_tokens,
        "embed",
    )
    assert first.cost_micros == lt.cost("text-embedding-3-small", embedded.usage.model_dump()).total_micros
    assert (second.model, second.output_tokens) == (DEPLOYMENTS["chat-prod"], response.usage.output_tokens)
    assert second.cost_micros == lt.cost(response.model, response.usage.model_dump()).total_micros > 0


def test_a_429_waits_out_retry_after_ms_then_succeeds(ledger: Any, opened: list[Any]) -> None:
    # 600 tokens a minute (10 a second) for the deployment. Another program (a bare SDK client)
    # takes 58 of them; the wrapped call asks for 568, meets a 429 and waits as Azure says.
    with FakeProvider(tpm=600, output_tokens=5, azure_deployments=DEPLOYMENTS) as provider:
        client = lt.wrap(azure(provider), guard=guard_for(ledger))
        opened.append(client)
        other = azure(provider, max_retries=0)
        opened.append(other)
        other.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        with lt.calls() as made:
            reply = client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=560)
        told_s = provider.counters.last_retry_after_ms / 1000
        assert provider.counters.rate_limited == 1 and provider.counters.by_status[429] == 1
    assert reply.choices[0].message.content
    [call] = made
    assert (call.outcome, call.attempts) == ("ok", 2)
    # It waited what retry-after-ms said (about 2.6 s), not retry-after's whole seconds (3).
    assert told_s % 1 != 0 and call.waited_s == pytest.approx(told_s, abs=0.05)
    last = records(ledger)[-1]
    assert last.outcome == "ok" and last.tags["attempts"] == 2


def test_limits_are_learned_from_azure_headers_requests_per_ten_seconds(opened: list[Any]) -> None:
    # 60 RPM is 10 requests per 10 seconds on Azure; 1,200 tokens a minute.
    with FakeProvider(rpm=60, tpm=1200, output_tokens=5, azure_deployments=DEPLOYMENTS) as provider:
        raw = azure(provider, max_retries=0)
        opened.append(raw)
        answer = raw.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=10)
        announced = {a.dimension: a for a in announced_limits("azure", answer.headers)}
        assert (announced["requests"].limit, announced["requests"].window_s) == (10, 10.0)
        assert (announced["tokens"].limit, announced["tokens"].window_s) == (1200, 60.0)
        learned = LearnedLimits()
        learned.observe("deployment", list(announced.values()))
        known = learned.of("deployment")
        assert known is not None
        limiter = known.limiter
        admitted = [bool(limiter.try_acquire("deployment", requests=1)) for _ in range(10)]
        refused = limiter.try_acquire("deployment", requests=1)
        # Nine left of the ten (the fake counted the first), then one more each second, not each 6 s.
        assert admitted.count(True) == 9 and not refused and refused.retry_after <= 1.0

        client = lt.wrap(azure(provider))  # no limits configured: learned from Azure's headers
        opened.append(client)
        started = time.monotonic()
        for _ in range(7):  # ~200 tokens each against 1,200 a minute, 20 a second
            client.chat.completions.create(model="chat-prod", messages=HELLO, max_tokens=190)
        elapsed = time.monotonic() - started
        assert provider.counters.rate_limited == 0, provider.counters  # learned, never discovered by 429s
    assert elapsed >= 5.0  # the wrapper waited for room itself


def test_a_non_retryable_azure_error_is_raised_at_once(ledger: Any, opened: list[Any]) -> None:
    with FakeProvider(azure_deployments=DEPLOYMENTS, azure_api_key=SECRET) as provider:
        wrong = lt.wrap(azure(provider, api_key="not-the-key"), guard=guard_for(ledger))
        opened.append(wrong)
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert denied.value.status_code == 401 and denied.value.code == "401"
        client = lt.wrap(azure(provider), guard=guard_for(ledger), model_of={"missing": "gpt-4o"})
        opened.append(client)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="missing", messages=HELLO)
        assert missing.value.code == "DeploymentNotFound"
        assert provider.counters.by_status == {401: 1, 404: 1}  # each tried once, never retried
    assert [(r.outcome, r.tags["status"], r.cost_micros) for r in records(ledger)] == [
        ("error", 401, 0),
        ("error", 404, 0),
    ]


def test_a_deployment_named_otherwise_than_its_model_must_be_mapped(opened: list[Any]) -> None:
    with FakeProvider(rpm=600, tpm=100_000, azure_deployments=DEPLOYMENTS) as provider:
        client = lt.wrap(azure(provider), guard=lt.Guard(lt.Limiter({"requests": "10/s"})))
        opened.append(client)
        with pytest.raises(lt.ConfigError, match=r"model_of=\{'chat-prod': 'gpt-4o'\}"):
            client.chat.completions.create(model="chat-prod", messages=HELLO)
        assert provider.counters.requests == 0
        # Without a guard nothing needs its price up front: the call goes, priced as Azure says.
        plain = lt.wrap(azure(provider))
        opened.append(plain)
        with lt.calls() as made:
            for _ in range(2):  # the second is admitted against the limits the first one learned
                plain.chat.completions.create(model="chat-prod", messages=HELLO, max_tokens=5)
        assert [(c.model, c.priced) for c in made] == [(DEPLOYMENTS["chat-prod"], True)] * 2
    for bad in ({"chat-prod": ""}, {"": "gpt-4o"}, {"chat-prod": "no-such-model"}, ["chat-prod"]):
        with pytest.raises(lt.ConfigError, match="model_of"):
            lt.wrap(
                openai.AzureOpenAI(azure_endpoint="http://127.0.0.1:9", api_key="k", api_version=VERSION), model_of=bad
            )


def test_async_clients_with_entra_id_tokens_share_the_deployments_limits(ledger: Any) -> None:
    # 6 RPM: Azure's window holds one request per 10 seconds. The first call uses it up, and
    # the announced remaining 0 pauses every caller of the deployment, whatever its token.
    state = lt.InProcessState()

    async def calls(provider: FakeProvider) -> None:
        first = lt.wrap(
            openai.AsyncAzureOpenAI(
                azure_endpoint=provider.azure_endpoint, api_version=VERSION, azure_ad_token="eyJ.first.token"
            ),
            guard=guard_for(ledger),
            state=state,
            model_of={"embed": "text-embedding-3-small"},
        )
        second = lt.wrap(
            openai.AsyncAzureOpenAI(
                azure_endpoint=provider.azure_endpoint, api_version=VERSION, azure_ad_token="eyJ.second.token"
            ),
            state=state,
            deadline_s=2.0,
        )
        assert isinstance(first, openai.AsyncAzureOpenAI)
        try:
            stream = await first.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=5, stream=True)
            async for _ in stream:
                pass
            with pytest.raises(lt.RateLimited) as paused:
                await second.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=5)
            assert paused.value.limited_by == "provider" and paused.value.retry_after > 2.0
            # Another deployment has limits of its own.
            await first.embeddings.create(model="embed", input="one")
        finally:
            await first.close()
            await second.close()

    with FakeProvider(rpm=6, output_tokens=5, azure_deployments=DEPLOYMENTS) as provider:
        asyncio.run(calls(provider))
        assert (provider.counters.requests, provider.counters.rate_limited) == (2, 0)  # no 429 was earned
    streamed, embedded = records(ledger)
    assert (streamed.model, streamed.output_tokens, streamed.tags["azure_deployment"]) == (
        DEPLOYMENTS["gpt-4o"],
        5,
        "gpt-4o",
    )
    assert embedded.model == "text-embedding-3-small" and embedded.outcome == "ok"


# ------------------------------------------------------------------ recognising Azure


@pytest.mark.parametrize(
    ("path", "host", "provider", "deployment"),
    [
        ("/openai/deployments/chat-prod/chat/completions", "r.openai.azure.com", "azure", "chat-prod"),
        ("/openai/deployments/embed/embeddings", "127.0.0.1", "azure", "embed"),
        ("/gw/openai/deployments/chat-prod/chat/completions", "apim.azure-api.net", "azure", "chat-prod"),
        ("/openai/responses", "r.openai.azure.com", "azure", ""),
        ("/openai/v1/chat/completions", "r.openai.azure.com", "azure", ""),
        ("/openai/v1/responses", "x.services.ai.azure.com", "azure", ""),
        ("/openai/v1/chat/completions", "api.groq.com", "openai", None),
        ("/v1/acct/gw/openai/chat/completions", "gateway.example.com", "openai", None),
        ("/v1/chat/completions", "api.openai.com", "openai", None),
        ("/anthropic/v1/messages", "x.services.ai.azure.com", "anthropic", None),
    ],
)
def test_azure_requests_are_recognised(path: str, host: str, provider: str, deployment: str | None) -> None:
    endpoint = endpoint_of("POST", path, host)
    assert endpoint is not None
    assert (endpoint.provider, endpoint.azure_deployment) == (provider, deployment)
    assert endpoint.counts_reserved_output == (provider != "anthropic")


def test_azures_rate_limit_headers() -> None:
    headers = {
        "x-ratelimit-limit-requests": "20",
        "x-ratelimit-remaining-requests": "19",
        "x-ratelimit-reset-requests": "10",
        "x-ratelimit-limit-tokens": "-1",  # what Azure's Responses API has been seen to send
        "x-ratelimit-remaining-tokens": "-1",
    }
    [requests] = announced_limits("azure", headers)
    assert (requests.dimension, requests.limit, requests.remaining, requests.reset_s, requests.window_s) == (
        "requests",
        20,
        19,
        10.0,
        10.0,
    )
    [as_openai] = announced_limits("openai", headers)
    assert as_openai.window_s == 60.0  # OpenAI's requests are per minute
    assert parse_reset_duration("45") == 45.0 and parse_reset_duration("1.5") == 1.5
    assert parse_reset_duration("-1") is None and parse_reset_duration("1.") is None


def test_a_reply_model_only_the_fallback_price_knows_leaves_the_call_priced_as_mapped(
    ledger: Any, opened: list[Any]
) -> None:
    """A guard whose table has a fallback price resolves every name: a model Azure names that the
    table does not know keeps the call priced as the model `model_of` maps the deployment to."""
    prices = lt.PriceTable.default().with_fallback(input=50, output=50)
    deployments = {"custom": "acme-distilled-7b"}
    with FakeProvider(azure_deployments=deployments, azure_api_key=SECRET) as provider:
        guard = lt.Guard(lt.Limiter({"requests": "1000/s"}), prices=prices, ledger=ledger)
        client = lt.wrap(azure(provider), guard=guard, model_of={"custom": "gpt-4o-mini"})
        opened.append(client)
        reply = client.chat.completions.create(model="custom", messages=HELLO, max_tokens=20)
    assert reply.model == "acme-distilled-7b"
    [record] = records(ledger)
    assert record.model == "gpt-4o-mini"
    assert record.cost_micros == prices.cost("gpt-4o-mini", reply.usage.model_dump()).total_micros
