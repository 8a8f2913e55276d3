"""Render the project's Asterisk configuration (asterisk_conf/ + dialplan/).

The files are templates with `{{ name }}` placeholders; everything else is
literal, so Asterisk's own `${VAR}` syntax passes through untouched. An
unknown or missing placeholder is an error, never an empty string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "asterisk_conf"
DIALPLAN_DIR = REPO_ROOT / "dialplan"

# Anything between double braces is a placeholder; a name that is not
# lower_snake_case is an error rather than text passed to Asterisk.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class ConfTemplateError(ValueError):
    pass


def render_text(text: str, values: Mapping[str, str], *, source: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if not _NAME.fullmatch(name):
            raise ConfTemplateError(f"{source}: malformed placeholder {match.group(0)!r}")
        if name not in values:
            raise ConfTemplateError(f"{source}: no value for placeholder {{{{ {name} }}}}")
        value = str(values[name])
        if "\n" in value or "\r" in value:
            # A value with a line break could inject configuration sections.
            raise ConfTemplateError(f"{source}: the value for {{{{ {name} }}}} has a line break")
        return value

    return _PLACEHOLDER.sub(substitute, text)


def placeholders() -> set[str]:
    """Every placeholder name the shipped templates use."""
    names: set[str] = set()
    for path in template_files():
        names.update(m.strip() for m in _PLACEHOLDER.findall(path.read_text()))
    return names


def template_files() -> list[Path]:
    return sorted(CONF_DIR.glob("*.conf")) + sorted(DIALPLAN_DIR.glob("*.conf"))


def render_all(values: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write every rendered file into `out_dir` (created 0750, files 0640:
    they hold the ARI and AMI secrets)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    written = []
    for path in template_files():
        target = out_dir / path.name
        text = render_text(path.read_text(), values, source=path.name)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(target, 0o640)
        written.append(target)
    return written
