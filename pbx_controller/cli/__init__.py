"""pbxctl command groups; each module exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

Register = Callable[["argparse._SubParsersAction[Any]"], None]

# One module per command group, in the order `pbxctl --help` lists them.
GROUP_MODULES = (
    "serve",
    "agent",
    "call",
    "billing",
    "cdr",
    "config",
    "tenant",
    "recordings",
)


def groups() -> list[Register]:
    return [importlib.import_module(f"pbx_controller.cli.{m}").register for m in GROUP_MODULES]
