"""`pbxctl`: the ops staff's command line.

Each command group lives in its own module under `pbx_controller.cli` and
exposes `register(subparsers)`; this module only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pbx_controller.cli import groups


class CliError(Exception):
    """A problem the operator can fix: printed without a traceback, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbxctl", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML settings file (default: $PBX_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in groups():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"pbxctl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m pbx_controller.cli.main`: use the package's module, so its
    # CliError is the one the command groups raise (one import, not two).
    from pbx_controller.cli.main import main as package_main

    sys.exit(package_main())
