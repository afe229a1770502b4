"""The `llmthrottle` command line.

Each subcommand lives in the module that owns its concern; this file only dispatches. A module
named in `_SUBCOMMANDS` provides `configure_parser(parser)` and `run(args) -> int`, and is
imported only when its subcommand runs, so `llmthrottle --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help, the extra its optional dependencies come with)
_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "state": ("llmthrottle.state_cli", "inspect or reset a shared-memory limiter table", ""),
    "report": ("llmthrottle.report", "spend by tenant/team/user/feature/model from a ledger", ""),
    "serve": (
        "llmthrottle.sidecar.cli",
        "run the sidecar: limits, budgets and ledger for every local process, on a Unix socket",
        "sidecar",
    ),
    "batch": (
        "llmthrottle.batch.cli",
        "run, resume or forecast a batch job over CSV/JSONL rows at the provider's limit",
        "providers",
    ),
    "gateway": (
        "llmthrottle.gateway.cli",
        "run an OpenAI/Anthropic-compatible proxy with virtual keys, tiers, budgets and failover",
        "gateway",
    ),
    "fake-provider": (
        "llmthrottle.testing.fake_provider_cli",
        "run a fake OpenAI/Anthropic API on loopback with their rate limits, for tests",
        "providers",
    ),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmthrottle",
        description="Rate limits, token budgets and cost control for LLM API calls.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text, _) in _SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.configure_parser(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        result: int = args._run(args)
    except ModuleNotFoundError as error:
        extra = _SUBCOMMANDS[args.command][2]
        if not extra or not error.name or error.name.startswith("llmthrottle"):
            raise
        print(
            f"llmthrottle {args.command} needs {error.name!r}, which is not installed: "
            f"pip install 'llmthrottle[{extra}]'",
            file=sys.stderr,
        )
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
