"""pbxctl command groups; each module exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _groups() -> list[Register]:
    # Imported lazily so `pbxctl --help` stays fast and a broken group names itself.
    from pbx_controller.cli import billing, serve

    return [serve.register, billing.register]


GROUPS: list[Register] = []


def __getattr__(name: str) -> object:  # pragma: no cover - trivial
    raise AttributeError(name)
