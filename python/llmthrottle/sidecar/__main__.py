"""`python -m llmthrottle.sidecar [options]`: the same as `llmthrottle serve [options]`."""

import argparse
import sys

from . import cli

parser = argparse.ArgumentParser(prog="llmthrottle serve", description=cli.__doc__)
cli.configure_parser(parser)
sys.exit(cli.run(parser.parse_args()))
