"""core/ stays pure: stdlib only, nothing of the project outside core, and no
IO, clock or randomness even from the standard library (ARCHITECTURE.md,
principle 1). Ids and instants come in with the events."""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

CORE_DIR = Path(__file__).resolve().parents[2] / "pbx_controller" / "core"
CORE_PACKAGE = "pbx_controller.core"

# Stdlib, but IO, clocks or randomness: the adapters own these.
BANNED_STDLIB = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "random",
        "secrets",
        "subprocess",
        "threading",
        "os",
        "io",
        "pathlib",
        "urllib",
        "http",
        "sqlite3",
        "logging",
        "uuid",
        # Dynamic imports would slip past this very check.
        "importlib",
    }
)

# Clock reads spelled through datetime, which core may import for the types:
# datetime.now(, dt.datetime.utcnow(, date.today(, datetime.today(, ...
CLOCK_READS = re.compile(r"(?:\.\s*now|\butcnow|\.\s*today)\s*\(")


def imported_modules(tree: ast.AST, *, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of `package`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append((node.lineno, "__import__"))
    return found


def violations(source: str, *, filename: str = "<core>", package: str = CORE_PACKAGE) -> list[str]:
    """Every purity problem in one core module's source, worded for a human."""
    problems: list[str] = []
    tree = ast.parse(source, filename=filename)
    for line, module in imported_modules(tree, package=package):
        top = module.split(".", 1)[0]
        where = f"{filename}:{line}"
        if module == "__import__":
            problems.append(f"{where}: dynamic __import__()")
        elif top == "pbx_controller":
            if module != CORE_PACKAGE and not module.startswith(CORE_PACKAGE + "."):
                problems.append(f"{where}: imports {module} (outside {CORE_PACKAGE})")
        elif top == "__future__":
            continue
        elif top not in sys.stdlib_module_names:
            problems.append(f"{where}: imports {module} (not in the standard library)")
        elif top in BANNED_STDLIB:
            problems.append(f"{where}: imports {module} (IO, clock or randomness)")
    for number, code in enumerate(_without_comments(source), start=1):
        if CLOCK_READS.search(code):
            problems.append(f"{filename}:{number}: reads the clock: {code.strip()}")
    return problems


def _without_comments(source: str) -> list[str]:
    """The source's lines with comments blanked (a '#' inside a string stays)."""
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    return lines


def core_files() -> list[Path]:
    return sorted(CORE_DIR.rglob("*.py"))


def test_core_has_modules_to_check() -> None:
    names = {path.name for path in core_files()}
    # Guards against the path silently pointing at an empty directory.
    assert {"engine.py", "events.py", "actions.py", "machine.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE_DIR)))
def test_core_module_is_pure(path: Path) -> None:
    relative = path.relative_to(CORE_DIR)
    package = ".".join([CORE_PACKAGE, *relative.parent.parts])
    assert violations(path.read_text(), filename=str(relative), package=package) == []


# -- the checker itself can fail ---------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import aiohttp\n", "imports aiohttp (not in the standard library)"),
        ("import time\n", "imports time (IO, clock or randomness)"),
        ("from uuid import uuid4\n", "imports uuid (IO, clock or randomness)"),
        ("import os.path\n", "imports os.path (IO, clock or randomness)"),
        ("from asyncio import sleep\n", "imports asyncio (IO, clock or randomness)"),
        ("from random import choice\n", "imports random (IO, clock or randomness)"),
        ("from sqlalchemy.orm import Session\n", "imports sqlalchemy.orm (not in the standard"),
        ("from pbx_controller.store import db\n", "imports pbx_controller.store (outside"),
        ("from pbx_controller import config\n", "imports pbx_controller (outside"),
        ("from .. import config\n", "imports pbx_controller (outside"),
        ("from ..asterisk import ari\n", "imports pbx_controller.asterisk (outside"),
        ("def f():\n    import socket\n", "imports socket (IO, clock or randomness)"),
        ("mod = __import__('socket')\n", "dynamic __import__()"),
        ("from datetime import datetime\nx = datetime.now(UTC)\n", "reads the clock"),
        ("import datetime\nx = datetime.datetime.utcnow()\n", "reads the clock"),
        ("from datetime import date\nx = date.today()\n", "reads the clock"),
        ("import datetime as dt\nx = dt.datetime.now ()\n", "reads the clock"),
        ("s = '#'; x = datetime.now()\n", "reads the clock"),
    ],
)
def test_checker_reports(source: str, expected: str) -> None:
    problems = violations(source)
    assert any(expected in p for p in problems), problems


def test_checker_reports_both_aiohttp_and_time() -> None:
    problems = violations("import aiohttp\nimport time\n", filename="bad.py")
    assert len(problems) == 2
    assert "bad.py:1: imports aiohttp" in problems[0]
    assert "bad.py:2: imports time" in problems[1]


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations\n",
        "from datetime import UTC, datetime, time, timedelta\n",  # datetime.time: a type
        "from decimal import Decimal\nimport re\nfrom zoneinfo import ZoneInfo\n",
        "from pbx_controller.core.cdr import CdrRecord\n",
        "from pbx_controller.core import events as e\n",
        "from . import events\nfrom .machine import TransitionTable\n",
        "def handle(event, now):\n    return now  # the caller's clock, not ours\n",
        "x = 1  # datetime.now( in a comment is fine\n",
        "DIGITS = '0123456789*#'  # a '#' in a string\n",
        "def known(x):\n    return x\nknown(1)\n",
    ],
)
def test_checker_accepts_pure_code(source: str) -> None:
    assert violations(source) == []
