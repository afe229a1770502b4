"""`llmthrottle batch`: run a batch job over CSV or JSONL rows, resume it, or forecast it.

    OPENAI_API_KEY=... llmthrottle batch run reviews.csv labels.jsonl --model gpt-4o-mini \\
        --template 'Label the sentiment of: {text}' --max-tokens 5 --max-cost 2.00
    llmthrottle batch resume labels.jsonl.job --retry-failed
    llmthrottle batch forecast reviews.csv --model gpt-4o-mini --template '...' --rpm 500 --tpm 200000
    llmthrottle batch run reviews.csv labels.jsonl --model gpt-4o-mini --pilot 50 --max-cost 2.00 \
        --build mypackage.labels:request --parse mypackage.labels:label
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["configure_parser", "run"]


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CSV (with a header) or JSONL rows; without --template, JSONL request bodies")
    parser.add_argument("--model", required=True, help="the model every row calls")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--template", help="the user message, with {field} from each row")
    template.add_argument("--template-file", type=Path, help="a file holding the template")
    parser.add_argument(
        "--build",
        metavar="MODULE:FUNCTION",
        help="makes each row's request body from its fields, instead of a template",
    )
    parser.add_argument("--system", help="a system prompt for every row")
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length cap (default: %(default)s)")
    parser.add_argument("--base-url", help="the provider's API base URL (a gateway, the fake provider)")
    parser.add_argument("--rpm", type=int, help="the provider's requests per minute, when known")
    parser.add_argument("--tpm", type=int, help="the provider's tokens per minute, when known")
    parser.add_argument("--max-cost", type=float, help="refuse the job above this expected cost, stop it at this spend")
    parser.add_argument(
        "--expected-output-tokens",
        type=int,
        help="the reply length the forecast expects (default: half of --max-tokens)",
    )
    parser.add_argument(
        "--batch-api",
        action="store_true",
        help="not urgent: send the rows through the provider's batch API (half price, done within 24 h)",
    )
    parser.add_argument(
        "--batch-poll", type=float, default=30.0, help="seconds between polls of a provider batch (default: 30)"
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    start = sub.add_parser("run", help="run a new job")
    _job_options(start)
    start.add_argument("output", help="the results: .jsonl or .csv")
    start.add_argument(
        "--parse", metavar="MODULE:FUNCTION", help="makes each row's result from the reply, instead of its text"
    )
    start.add_argument(
        "--pilot",
        type=int,
        default=0,
        metavar="N",
        help="send the first N rows before the go/no-go and forecast the rest from their replies' length",
    )
    start.add_argument("--concurrency", type=int, default=16, help="most calls in flight (default: %(default)s)")
    start.add_argument("--job-dir", type=Path, help="the job's directory (default: OUTPUT.job)")
    start.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    again = sub.add_parser("resume", help="finish a job after a crash, Ctrl-C or its cost cap")
    again.add_argument("job_dir", type=Path)
    again.add_argument("--retry-failed", action="store_true", help="run the failed rows again too")
    again.add_argument("--max-cost", type=float, help="a new cost cap for the job")
    again.add_argument("--no-progress", action="store_true")
    ahead = sub.add_parser("forecast", help="count every request exactly and forecast cost and time; sends nothing")
    _job_options(ahead)


def run(args: argparse.Namespace) -> int:
    from .._native import LlmthrottleError
    from . import JobSpec, plan, resume
    from . import run as run_job

    try:
        if args.batch_command == "resume":
            result = resume(
                args.job_dir, retry_failed=args.retry_failed, max_cost_usd=args.max_cost, progress=not args.no_progress
            )
        else:
            template = args.template_file.read_text() if args.template_file else args.template
            options = dict(
                model=args.model,
                provider=args.provider,
                template=template,
                system=args.system,
                max_tokens=args.max_tokens,
                base_url=args.base_url,
                rpm=args.rpm,
                tpm=args.tpm,
                max_cost_usd=args.max_cost,
                expected_output_tokens=args.expected_output_tokens,
                batch_api=args.batch_api,
                batch_poll_s=args.batch_poll,
                build=args.build,
            )
            if args.batch_command == "forecast":
                print(plan(JobSpec(input=args.input, output="forecast.jsonl", **options)).describe())
                return 0
            result = run_job(
                args.input,
                args.output,
                **options,
                parse=args.parse,
                pilot=args.pilot,
                concurrency=args.concurrency,
                job_dir=args.job_dir,
                progress=not args.no_progress,
            )
    except (LlmthrottleError, ValueError, OSError) as error:
        print(f"llmthrottle batch: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmthrottle batch: interrupted; finish with llmthrottle batch resume", file=sys.stderr)
        return 130
    print(result.summary())
    return 0 if not result.failed and not result.pending else 3
