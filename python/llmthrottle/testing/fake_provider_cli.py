"""`llmthrottle fake-provider`: the fake OpenAI/Anthropic/Azure OpenAI API of
`llmthrottle.testing.FakeProvider` on a fixed port, until Ctrl-C.

    llmthrottle fake-provider --port 8089 --rpm 60 --tpm 20000
    llmthrottle fake-provider --azure-deployment chat-prod=gpt-4o-2024-08-06 --azure-api-key k
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port to bind (default: %(default)s)")
    for name, what in (
        ("rpm", "requests per minute"),
        ("tpm", "OpenAI tokens per minute"),
        ("itpm", "Anthropic input tokens per minute"),
        ("otpm", "Anthropic output tokens per minute"),
    ):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: unlimited)")
    parser.add_argument("--output-tokens", type=int, default=16, help="tokens in every reply (default: %(default)s)")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--per-token", type=float, default=0.0, help="seconds per output token")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500")
    parser.add_argument("--overload-rate", type=float, default=0.0, help="share of Anthropic requests answered 529")
    parser.add_argument("--insufficient-quota", action="store_true", help="refuse OpenAI requests as out of credit")
    parser.add_argument(
        "--azure-deployment",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="an Azure OpenAI deployment and the model it runs (repeatable; default: any deployment, "
        "running the model of its name)",
    )
    parser.add_argument("--azure-api-key", default=None, help="the only Azure api-key accepted (default: any)")


def run(args: argparse.Namespace) -> int:
    from .fake_azure import deployment_map
    from .fake_provider import FakeProvider

    try:
        deployments = deployment_map(args.azure_deployment) if args.azure_deployment else None
    except ValueError as error:
        print(f"llmthrottle fake-provider: {error}", file=sys.stderr)
        return 2

    provider = FakeProvider(
        rpm=args.rpm,
        tpm=args.tpm,
        itpm=args.itpm,
        otpm=args.otpm,
        output_tokens=args.output_tokens,
        ttft_s=args.ttft,
        per_token_s=args.per_token,
        error_rate=args.error_rate,
        overload_rate=args.overload_rate,
        insufficient_quota=args.insufficient_quota,
        azure_deployments=deployments,
        azure_api_key=args.azure_api_key,
        host=args.host,
        port=args.port,
    )
    provider.start()
    print(
        f"fake provider on {provider.base_url}: OpenAI base_url {provider.openai_base_url}, "
        f"Anthropic base_url {provider.anthropic_base_url}, Azure azure_endpoint {provider.azure_endpoint} "
        "(Ctrl-C stops)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()
    return 0
