"""pbx.toml: tenants, DIDs, queues, agents and skills in one declarative file.

    parse(text) -> PbxConfig     validated, frozen core model objects
    render(config) -> str        the same TOML back, stable and sorted
    diff(old, new) -> [Change]   what applying `new` over `old` changes

Ops write human units (seconds, "08:00-18:00"); the model holds integer
milliseconds and `OpenWindow`s. Every problem names its key path, e.g.
`queues.acme-sales.skills[0].min_level: must be at most 10, got 11`.
One problem is reported per tenant, queue or agent (the first found), and
cross-references are checked once every entity parsed.

The file is canonical in one direction: parse(render(c)) == c for every
config `parse` produces, so `config apply` of `config show` changes nothing.
Sections and ids render sorted; lists whose order means something (priority
and overflow rules, relaxations, greeting sounds) keep their order.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pbx_controller.core.consent import (
    DIGITS,
    ConsentPolicy,
    ConsentRules,
    RecordingRules,
    WithdrawalPolicy,
)
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    BusinessHours,
    Directory,
    OpenWindow,
    OverflowRule,
    PriorityRule,
    Queue,
    QueueMembership,
    Relaxation,
    SkillRequirement,
    Strategy,
    Tenant,
)

__all__ = [
    "DEFAULT_CONSENT",
    "DEFAULT_GREETING",
    "RECORDING_FORMATS",
    "RESERVED_PREFIX",
    "Change",
    "ConfigFileError",
    "DidConfig",
    "PbxConfig",
    "Problem",
    "TenantConfig",
    "diff",
    "key_path",
    "load",
    "parse",
    "render",
]

DEFAULT_GREETING = ("sound:hello-world",)
DEFAULT_MAX_WAIT_MS = 300_000  # the database requires a limit (queue.max_wait_ms > 0)
DEFAULT_RETENTION_DAYS = 90
# A tenant whose file says nothing about consent asks for it explicitly
# (GDPR-safe); the core's own Tenant default never records at all.
DEFAULT_CONSENT = ConsentRules(ConsentPolicy.OPT_IN)
# Besides the WAV, which is always kept; rendered and stored in this order.
RECORDING_FORMATS = ("mp3", "opus")
# Durations fit the database's INTEGER columns (about 24 days).
MAX_MS = 2**31 - 1
# Queue names and agent endpoints starting with this are the store's own
# placeholders (retired queues, released endpoints); the file may not use it.
RESERVED_PREFIX = "~"

# Ids travel in channel variables, logs and CLIs; 63 leaves room for the
# store's one-character placeholder prefix in 64-character columns.
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SKILL = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DID = re.compile(r"\+?[0-9]{1,31}")
_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9]*/[A-Za-z0-9._@:+-]{1,60}")
_CONTEXT = re.compile(r"[A-Za-z0-9_-]{1,79}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_RANGE = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?-(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# -- the model the file maps to ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """A tenant as configured. Everything, consent and recording rules
    included, lives in the core's Tenant (what the engine reads); the
    properties are shorthands for the store and the CLI."""

    tenant: Tenant

    @property
    def id(self) -> str:
        return self.tenant.id

    @property
    def consent_policy(self) -> ConsentPolicy:
        return self.tenant.consent.policy

    @property
    def recording_retention_days(self) -> int:
        return self.tenant.recording.retention_days


@dataclass(frozen=True, slots=True)
class DidConfig:
    number: str
    tenant_id: str
    queue_id: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class PbxConfig:
    """The whole configuration; each tuple sorted by id (DIDs by number), so
    two configs that mean the same compare equal."""

    tenants: tuple[TenantConfig, ...] = ()
    dids: tuple[DidConfig, ...] = ()
    queues: tuple[Queue, ...] = ()
    agents: tuple[AgentProfile, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", tuple(sorted(self.tenants, key=lambda t: t.id)))
        object.__setattr__(self, "dids", tuple(sorted(self.dids, key=lambda d: d.number)))
        object.__setattr__(self, "queues", tuple(sorted(self.queues, key=lambda q: q.id)))
        object.__setattr__(self, "agents", tuple(sorted(self.agents, key=lambda a: a.id)))

    def directory(self) -> Directory:
        """The core's view: what the engine and the router decide with."""
        return Directory.build(
            [t.tenant for t in self.tenants],
            [(d.number, d.tenant_id) for d in self.dids],
            queues=self.queues,
            agents=self.agents,
            did_queues=[(d.number, d.queue_id) for d in self.dids if d.queue_id is not None],
        )


# -- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # "queues.acme-sales.skills[0].min_level"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigFileError(ValueError):
    """The file is not a valid pbx.toml; `problems` name each offending key."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.problem = Problem(path, message)


_MISSING: Any = object()
T = TypeVar("T")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _join(path: str, key: str) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


def key_path(*keys: str) -> str:
    """The path problems name: key_path("agents", "anna.k", "skills") is
    'agents."anna.k".skills'."""
    path = ""
    for key in keys:
        path = _join(path, key)
    return path


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


class _Table:
    """One TOML table being read: typed getters that raise with the key path,
    and `only()` that rejects any key it does not know."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise _Invalid(self.at(key), f"unknown key{hint}")

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value); absent and required raises."""
        if key in self.data:
            return True, self.data[key]
        if default is _MISSING:
            raise _Invalid(self.at(key), "is required")
        return False, default

    def text(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 200,
        what: str = "",
    ) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        return _string(value, self.at(key), pattern=pattern, max_len=max_len, what=what)

    def integer(
        self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(self.at(key), f"expected an integer, got {_kind(value)}")
        if lo is not None and value < lo:
            raise _Invalid(self.at(key), f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise _Invalid(self.at(key), f"must be at most {hi}, got {value}")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        present, value = self._get(key, default)
        if present and not isinstance(value, bool):
            raise _Invalid(self.at(key), f"expected true or false, got {_kind(value)}")
        return value

    def ms(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> Any:
        """Seconds in the file (an integer, or a float to the millisecond) -> ms."""
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(self.at(key), f"expected seconds (a number), got {_kind(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise _Invalid(self.at(key), f"{value} is not a number of seconds")
        ms = round(value * 1000)
        if abs(value * 1000 - ms) > 1e-6:
            raise _Invalid(self.at(key), f"{value} is not a whole number of milliseconds")
        if ms < 0 or (positive and ms == 0):
            bound = "greater than 0" if positive else "at least 0"
            raise _Invalid(self.at(key), f"must be {bound} seconds, got {value}")
        if ms > MAX_MS:
            raise _Invalid(self.at(key), f"must be at most {MAX_MS // 1000} seconds")
        return ms

    def table(self, key: str) -> _Table | None:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            raise _Invalid(self.at(key), f"expected a table, got {_kind(value)}")
        return _Table(value, self.at(key))

    def array(self, key: str) -> list[tuple[str, Any]]:
        """(path, item) for each item of an array; absent is empty."""
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise _Invalid(self.at(key), f"expected an array, got {_kind(value)}")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]


def _string(
    value: object,
    path: str,
    *,
    pattern: re.Pattern[str] | None = None,
    max_len: int = 200,
    what: str = "",
) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise _Invalid(path, "must not be empty")
    if len(value) > max_len:
        raise _Invalid(path, f"is longer than {max_len} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Invalid(path, "must not contain control characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _Invalid(path, f"{value!r} is not {what or 'valid'}")
    return value


def _table_of(value: object, path: str) -> _Table:
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected a table, got {_kind(value)}")
    return _Table(value, path)


def _entities(root: _Table, key: str, problems: list[Problem]) -> list[tuple[str, _Table]]:
    """(id, table) of each entity in a section; a bad id is a problem of its own."""
    try:
        section = root.table(key)
    except _Invalid as exc:
        problems.append(exc.problem)
        return []
    if section is None:
        return []
    out = []
    for entity_id, value in section.data.items():
        path = section.at(entity_id)
        if not _ID.fullmatch(entity_id):
            problems.append(
                Problem(path, "is not an id: lowercase letters, digits, '.', '_', '-', at most 63")
            )
        elif not isinstance(value, dict):
            problems.append(Problem(path, f"expected a table, got {_kind(value)}"))
        else:
            out.append((entity_id, _Table(value, path)))
    return out


# -- parsing --------------------------------------------------------------------------------


def load(path: Path) -> PbxConfig:
    """Read and parse the file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError([Problem("", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigFileError([Problem("", "cannot read: not UTF-8 text")]) from None
    return parse(text)


def parse(text: str) -> PbxConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([Problem("", f"not valid TOML: {exc}")]) from None
    problems: list[Problem] = []

    def attempt(make: Callable[..., T], *args: Any) -> T | None:
        try:
            return make(*args)
        except _Invalid as exc:
            problems.append(exc.problem)
            return None

    root = _Table(data, "")
    attempt(root.only, "tenants", "queues", "agents")
    tenant_tables = _entities(root, "tenants", problems)
    queue_tables = _entities(root, "queues", problems)
    agent_tables = _entities(root, "agents", problems)

    tenants: dict[str, TenantConfig] = {}
    dids: dict[str, tuple[str, DidConfig]] = {}  # number -> (key path, DID)
    for tenant_id, table in tenant_tables:
        parsed = attempt(_tenant, tenant_id, table)
        if parsed is None:
            continue
        tenant, tenant_dids = parsed
        tenants[tenant_id] = tenant
        for path, did in tenant_dids:
            if did.number in dids:
                first = dids[did.number][0]
                problems.append(Problem(f"{path}.number", f"DID {did.number} is also {first}"))
            else:
                dids[did.number] = (path, did)

    queues: dict[str, tuple[_Table, Queue]] = {}
    for queue_id, table in queue_tables:
        queue = attempt(_queue, queue_id, table)
        if queue is not None:
            queues[queue_id] = (table, queue)

    agents: dict[str, tuple[_Table, AgentProfile, list[str]]] = {}
    for agent_id, table in agent_tables:
        agent = attempt(_agent, agent_id, table)
        if agent is not None:
            agents[agent_id] = (table, *agent)

    # What failed to parse was reported already: references to it are not
    # reported again as unknown.
    declared = ({t for t, _ in tenant_tables}, {q for q, _ in queue_tables})
    problems.extend(_cross_check(tenants, dids, queues, agents, *declared))
    if problems:
        raise ConfigFileError(problems)
    return PbxConfig(
        tenants=tuple(tenants.values()),
        dids=tuple(did for _, did in dids.values()),
        queues=tuple(q for _, q in queues.values()),
        agents=tuple(a for _, a, _ in agents.values()),
    )


def _tenant(tenant_id: str, t: _Table) -> tuple[TenantConfig, list[tuple[str, DidConfig]]]:
    t.only(
        "name",
        "timezone",
        "greeting",
        "consent_policy",
        "consent_agree_digit",
        "consent_opt_out_digit",
        "consent_timeout_s",
        "consent_prompt_version",
        "consent_prompt",
        "recording_formats",
        "recording_withdrawal",
        "recording_retention_days",
        "hours",
        "dids",
    )
    name = t.text("name")
    timezone = t.text("timezone", "Europe/Warsaw", max_len=64)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid(t.at("timezone"), f"{timezone!r} is not an IANA time zone") from None
    greeting = _sounds(t, "greeting", DEFAULT_GREETING, "e.g. 'sound:hello-world'")
    consent = _consent(t)
    recording = RecordingRules(
        formats=_recording_formats(t),
        withdrawal=_choice(t, "recording_withdrawal", WithdrawalPolicy.DELETE),
        retention_days=t.integer(
            "recording_retention_days", DEFAULT_RETENTION_DAYS, lo=1, hi=36500
        ),
    )
    hours_table = t.table("hours")
    hours = None if hours_table is None else _hours(hours_table)
    tenant = TenantConfig(
        Tenant(tenant_id, name, timezone, greeting, hours, consent=consent, recording=recording)
    )
    dids = [(path, _did(tenant_id, path, item)) for path, item in t.array("dids")]
    return tenant, dids


E = TypeVar("E", ConsentPolicy, WithdrawalPolicy)


def _choice(t: _Table, key: str, default: E) -> E:
    text = t.text(key, default.value, max_len=32)
    try:
        return type(default)(text)
    except ValueError:
        choices = ", ".join(str(c.value) for c in type(default))
        raise _Invalid(t.at(key), f"must be one of {choices}") from None


def _digit(t: _Table, key: str, default: str) -> str:
    value = t.data.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Invalid(t.at(key), f'must be a string (quote it: "{value}")')
    digit = _string(value, t.at(key), max_len=16)
    if digit not in DIGITS:
        raise _Invalid(t.at(key), f"{digit!r} is not one DTMF digit (0-9, * or #)")
    return digit


def _consent(t: _Table) -> ConsentRules:
    default = DEFAULT_CONSENT
    agree = _digit(t, "consent_agree_digit", default.agree_digit)
    opt_out = _digit(t, "consent_opt_out_digit", default.opt_out_digit)
    if agree == opt_out:
        # Name the key the file wrote (the other may be the default).
        key = "opt_out" if "consent_opt_out_digit" in t.data else "agree"
        other = "agree" if key == "opt_out" else "opt_out"
        raise _Invalid(
            t.at(f"consent_{key}_digit"),
            f"{agree!r} is also consent_{other}_digit: the two must differ",
        )
    return ConsentRules(
        policy=_choice(t, "consent_policy", default.policy),
        agree_digit=agree,
        opt_out_digit=opt_out,
        # Kept with every recording as evidence of what the caller heard.
        prompt_version=t.text("consent_prompt_version", default.prompt_version, max_len=64),
        answer_timeout_ms=t.ms("consent_timeout_s", default.answer_timeout_ms, positive=True),
        prompt=_sounds(t, "consent_prompt", (), "or omit it for the policy's stock prompt"),
    )


def _recording_formats(t: _Table) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for path, item in t.array("recording_formats"):
        fmt = _string(item, path, max_len=16)
        if fmt not in RECORDING_FORMATS:
            choices = " or ".join(RECORDING_FORMATS)
            raise _Invalid(path, f"{fmt!r} is not {choices} (the WAV is always kept)")
        if fmt in seen:
            raise _Invalid(path, f"{fmt!r} is also {seen[fmt]}")
        seen[fmt] = path
    return tuple(f for f in RECORDING_FORMATS if f in seen)


def _sounds(t: _Table, key: str, default: tuple[str, ...], hint: str) -> tuple[str, ...]:
    """A media URI or a list of them, played in order."""
    value = t.data.get(key, _MISSING)
    if value is _MISSING:
        return default
    items = [(t.at(key), value)] if isinstance(value, str) else t.array(key)
    if not items:
        raise _Invalid(t.at(key), f"needs at least one sound, {hint}")
    sounds = []
    for path, item in items:
        sound = _string(item, path, max_len=255)
        # The store joins sounds with '&' (Asterisk's multi-file separator).
        if "&" in sound or ":" not in sound:
            raise _Invalid(path, f"{sound!r} is not a media URI like 'sound:hello-world'")
        sounds.append(sound)
    if len("&".join(sounds)) > 255:
        raise _Invalid(t.at(key), "is longer than 255 characters in all")
    return tuple(sounds)


def _did(tenant_id: str, path: str, item: object) -> DidConfig:
    if isinstance(item, str):  # dids = ["48221001", ...]
        number = _string(item, path, pattern=_DID, what="a DID (digits, optional leading +)")
        return DidConfig(number, tenant_id)
    t = _table_of(item, path)
    t.only("number", "queue", "label")
    if isinstance(t.data.get("number"), int) and not isinstance(t.data["number"], bool):
        raise _Invalid(t.at("number"), "must be a string (quote it: leading zeros matter)")
    number = t.text("number", pattern=_DID, max_len=32, what="a DID (digits, optional leading +)")
    queue = t.text("queue", None, pattern=_ID, max_len=63, what="a queue id")
    label = t.text("label", None)
    return DidConfig(number, tenant_id, queue, label)


def _hours(t: _Table) -> BusinessHours:
    windows: list[tuple[str, OpenWindow]] = []
    holidays: set[date] = set()
    for key, value in t.data.items():
        if key == "holidays":
            for path, item in t.array("holidays"):
                holidays.add(_holiday(path, item))
            continue
        days = _day_spec(key, t.at(key))
        ranges = [(t.at(key), value)] if isinstance(value, str) else t.array(key)
        if not ranges:
            raise _Invalid(t.at(key), "needs at least one range like '08:00-18:00'")
        for path, item in ranges:
            start, end = _time_range(path, item)
            windows.extend((path, OpenWindow(day, start, end)) for day in days)
    if not windows:
        # No window at all would be closed for good, surely not what was meant.
        raise _Invalid(
            t.path,
            'needs at least one day, e.g. mon-sun = "00:00-24:00"; omit it to be always open',
        )
    _no_overlap(windows)
    return BusinessHours(
        tuple(sorted((w for _, w in windows), key=lambda w: (w.weekday, w.start, w.end))),
        frozenset(holidays),
    )


def _day_spec(key: str, path: str) -> list[int]:
    """'mon', 'mon-fri', 'sat,sun', 'mon-wed,fri' -> weekdays (0 = Monday)."""
    days: list[int] = []
    for part in key.split(","):
        ends = part.strip().split("-")
        try:
            first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        except ValueError:
            first = last = -1
        if len(ends) > 2 or first < 0 or last < first:
            raise _Invalid(path, "is not a day or day range: mon..sun, e.g. mon-fri or sat,sun")
        days.extend(range(first, last + 1))
    if len(set(days)) != len(days):
        raise _Invalid(path, "names a day twice")
    return days


def _time_range(path: str, item: object) -> tuple[time, time]:
    text = _string(item, path, max_len=20)
    match = _RANGE.fullmatch(text.replace(" ", ""))
    bad = f"{text!r} is not a time range like '08:00-18:00'"
    if match is None:
        raise _Invalid(path, bad)
    h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in match.groups())
    if h1 > 23 or m1 > 59 or s1 > 59 or m2 > 59 or s2 > 59 or h2 > 24 or (h2 == 24 and m2 + s2):
        raise _Invalid(path, bad)
    start, end = time(h1, m1, s1), time(h2 % 24, m2, s2)
    if start == end and not (h1 == 0 and h2 == 24):
        # The model reads equal times as "the whole day"; in a file that is a typo.
        raise _Invalid(path, f"{text!r} is empty; write '00:00-24:00' for the whole day")
    return start, end


def _holiday(path: str, item: object) -> date:
    if isinstance(item, date) and not isinstance(item, datetime):
        return item
    if isinstance(item, str):
        try:
            return date.fromisoformat(item)
        except ValueError:
            pass
    raise _Invalid(path, "expected a date like 2026-12-25")


def _week_intervals(w: OpenWindow) -> list[tuple[int, int]]:
    """The window as [start, end) seconds of the week, split at Sunday midnight."""
    day = 86_400
    start = w.weekday * day + w.start.hour * 3600 + w.start.minute * 60 + w.start.second
    length = (
        day
        if w.start == w.end
        else (w.end.hour * 3600 + w.end.minute * 60 + w.end.second)
        - (w.start.hour * 3600 + w.start.minute * 60 + w.start.second)
    )
    if length < 0:
        length += day
    week = 7 * day
    end = start + length
    return [(start, end)] if end <= week else [(start, week), (0, end - week)]


def _no_overlap(windows: list[tuple[str, OpenWindow]]) -> None:
    spans = sorted((iv, path, w.weekday) for path, w in windows for iv in _week_intervals(w))
    reach, reach_path = -1, ""
    for (start, end), path, weekday in spans:
        if start < reach:
            raise _Invalid(path, f"overlaps {reach_path} on {_DAYS[weekday]}")
        if end > reach:
            reach, reach_path = end, path


def _queue(queue_id: str, t: _Table) -> Queue:
    t.only(
        "tenant",
        "name",
        "strategy",
        "ring_timeout_s",
        "wrapup_s",
        "max_wait_s",
        "max_callers",
        "service_level_s",
        "default_priority",
        "skills",
        "priority",
        "overflow",
        "announcements",
    )
    tenant_id = t.text("tenant", pattern=_ID, max_len=63, what="a tenant id")
    name = t.text("name", queue_id, max_len=64)
    if name.startswith(RESERVED_PREFIX):
        raise _Invalid(t.at("name"), f"must not start with {RESERVED_PREFIX!r} (reserved)")
    strategy_text = t.text("strategy", Strategy.LONGEST_IDLE.value, max_len=32)
    try:
        strategy = Strategy(strategy_text)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise _Invalid(t.at("strategy"), f"must be one of {choices}") from None
    skills: dict[str, SkillRequirement] = {}
    for path, item in t.array("skills"):
        req = _skill(path, item)
        if req.skill in skills:
            raise _Invalid(f"{path}.skill", f"skill {req.skill!r} is required twice")
        skills[req.skill] = req
    announcements_table = t.table("announcements")
    return Queue(
        id=queue_id,
        tenant_id=tenant_id,
        name=name,
        strategy=strategy,
        skills=tuple(skills[k] for k in sorted(skills)),
        ring_timeout_ms=t.ms("ring_timeout_s", 15_000, positive=True),
        wrapup_ms=t.ms("wrapup_s", 10_000),
        max_wait_ms=t.ms("max_wait_s", DEFAULT_MAX_WAIT_MS, positive=True),
        max_callers=t.integer("max_callers", None, lo=1),
        service_level_ms=t.ms("service_level_s", 20_000, positive=True),
        default_priority=t.integer("default_priority", 0, lo=-1000, hi=1000),
        priority_rules=tuple(_priority(path, item) for path, item in t.array("priority")),
        overflow=tuple(_overflow(path, item) for path, item in t.array("overflow")),
        announcements=Announcements()
        if announcements_table is None
        else _announcements(announcements_table),
    )


def _skill(path: str, item: object) -> SkillRequirement:
    t = _table_of(item, path)
    t.only("skill", "min_level", "relax")
    skill = t.text("skill", pattern=_SKILL, max_len=64, what="a skill name")
    level = t.integer("min_level", 1, lo=1, hi=10)
    steps: list[Relaxation] = []
    last_ms, current = -1, level
    for step_path, step_item in t.array("relax"):
        step = _table_of(step_item, step_path)
        step.only("after_s", "min_level", "optional")
        after_ms = step.ms("after_s")
        if after_ms <= last_ms:
            raise _Invalid(step.at("after_s"), "must be later than the step before")
        if current is None:
            raise _Invalid(step_path, "no step can follow optional = true")
        optional = step.flag("optional", False)
        if "optional" in step.data and not optional:
            raise _Invalid(step.at("optional"), "write min_level instead of optional = false")
        min_level = step.integer("min_level", None, lo=1, hi=10)
        if (min_level is None) == (not optional):
            raise _Invalid(step_path, "set either min_level or optional = true, not both")
        if min_level is not None and min_level >= current:
            raise _Invalid(
                step.at("min_level"), f"must be lower than {current} (relax only widens)"
            )
        steps.append(Relaxation(after_ms, min_level, optional))
        last_ms, current = after_ms, min_level
    return SkillRequirement(skill, level, tuple(steps))


def _priority(path: str, item: object) -> PriorityRule:
    t = _table_of(item, path)
    t.only("priority", "caller_prefix", "did")
    priority = t.integer("priority", lo=-1000, hi=1000)
    prefix = t.text(
        "caller_prefix", "", pattern=re.compile(r"\+?[0-9]{1,31}"), what="a number prefix"
    )
    did = t.text("did", "", pattern=_DID, max_len=32, what="a DID")
    if not prefix and not did:
        raise _Invalid(path, "needs caller_prefix or did (default_priority covers everyone)")
    return PriorityRule(priority, prefix, did)


def _overflow(path: str, item: object) -> OverflowRule:
    t = _table_of(item, path)
    t.only("after_s", "when_unstaffed", "queue", "context")
    after_ms = t.ms("after_s", None)
    when_unstaffed = t.flag("when_unstaffed", False)
    if after_ms is None and not when_unstaffed:
        raise _Invalid(path, "needs after_s or when_unstaffed = true")
    queue = t.text("queue", None, pattern=_ID, max_len=63, what="a queue id")
    context = t.text("context", None, pattern=_CONTEXT, what="a dialplan context")
    if (queue is None) == (context is None):
        raise _Invalid(path, "needs exactly one target: queue or context")
    return OverflowRule(after_ms, when_unstaffed, queue, context)


def _announcements(t: _Table) -> Announcements:
    t.only("hold_music", "position", "estimated_wait", "first_after_s", "every_s")
    default = Announcements()
    return Announcements(
        hold_music=t.text("hold_music", default.hold_music, max_len=80),
        position=t.flag("position", default.position),
        estimated_wait=t.flag("estimated_wait", default.estimated_wait),
        first_after_ms=t.ms("first_after_s", default.first_after_ms),
        every_ms=t.ms("every_s", default.every_ms, positive=True),
    )


def _agent(agent_id: str, t: _Table) -> tuple[AgentProfile, list[str]]:
    """The profile, and the key path of each membership (for cross-checks)."""
    t.only("name", "endpoint", "recording_consent", "skills", "queues")
    name = t.text("name")
    endpoint = t.text(
        "endpoint", pattern=_ENDPOINT, max_len=64, what="an endpoint like 'PJSIP/agent-anna'"
    )
    consent = t.flag("recording_consent", False)
    skills: dict[str, int] = {}
    skills_table = t.table("skills")
    if skills_table is not None:
        for skill in skills_table.data:
            if not _SKILL.fullmatch(skill):
                raise _Invalid(
                    skills_table.at(skill),
                    "is not a skill name: lowercase letters, digits, '_', '-'",
                )
            skills[skill] = skills_table.integer(skill, lo=1, hi=10)
    memberships: list[QueueMembership] = []
    paths: list[str] = []
    seen: dict[str, str] = {}
    for path, item in t.array("queues"):
        if isinstance(item, str):
            member = QueueMembership(
                _string(item, path, pattern=_ID, max_len=63, what="a queue id")
            )
            queue_path = path
        else:
            m = _table_of(item, path)
            m.only("queue", "penalty", "order", "weight")
            member = QueueMembership(
                queue_id=m.text("queue", pattern=_ID, max_len=63, what="a queue id"),
                penalty=m.integer("penalty", 0, lo=0, hi=1000),
                order=m.integer("order", 0, lo=0, hi=100_000),
                weight=m.integer("weight", 1, lo=1, hi=1000),
            )
            queue_path = m.at("queue")
        if member.queue_id in seen:
            raise _Invalid(queue_path, f"queue {member.queue_id!r} is also {seen[member.queue_id]}")
        seen[member.queue_id] = queue_path
        memberships.append(member)
        paths.append(queue_path)
    order = sorted(range(len(memberships)), key=lambda i: memberships[i].queue_id)
    profile = AgentProfile(
        agent_id, name, endpoint, skills, tuple(memberships[i] for i in order), consent
    )
    return profile, [paths[i] for i in order]


def _cross_check(
    tenants: Mapping[str, TenantConfig],
    dids: Mapping[str, tuple[str, DidConfig]],
    queues: Mapping[str, tuple[_Table, Queue]],
    agents: Mapping[str, tuple[_Table, AgentProfile, list[str]]],
    declared_tenants: set[str],
    declared_queues: set[str],
) -> list[Problem]:
    """References between entities; tenant isolation is checked here.
    `declared_*`: ids in the file, parsed or not."""
    out: list[Problem] = []
    names: dict[tuple[str, str], str] = {}
    for queue_id, (t, queue) in queues.items():
        if queue.tenant_id not in tenants:
            if queue.tenant_id not in declared_tenants:
                out.append(Problem(t.at("tenant"), f"unknown tenant {queue.tenant_id!r}"))
            continue
        key = (queue.tenant_id, queue.name)
        if key in names:
            out.append(Problem(t.at("name"), f"{queue.name!r} is also queue {names[key]}'s name"))
        names[key] = queue_id
        tenant_dids = {d.number for _, d in dids.values() if d.tenant_id == queue.tenant_id}
        for i, rule in enumerate(queue.priority_rules):
            if rule.did and rule.did not in tenant_dids:
                out.append(
                    Problem(
                        f"{t.at('priority')}[{i}].did",
                        f"{rule.did} is not a DID of tenant {queue.tenant_id}",
                    )
                )
        for i, overflow in enumerate(queue.overflow):
            target = overflow.queue_id
            if target is None:
                continue
            path = f"{t.at('overflow')}[{i}].queue"
            if target == queue_id:
                out.append(Problem(path, "a queue cannot overflow into itself"))
            elif target not in queues:
                if target not in declared_queues:
                    out.append(Problem(path, f"unknown queue {target!r}"))
            elif queues[target][1].tenant_id != queue.tenant_id:
                out.append(
                    Problem(
                        path,
                        f"queue {target} belongs to tenant "
                        f"{queues[target][1].tenant_id}, not {queue.tenant_id}",
                    )
                )
    for path, did in dids.values():
        if did.queue_id is None:
            continue
        if did.queue_id not in queues:
            if did.queue_id not in declared_queues:
                out.append(Problem(f"{path}.queue", f"unknown queue {did.queue_id!r}"))
        elif (owner := queues[did.queue_id][1].tenant_id) != did.tenant_id:
            # One tenant's callers never wait in another tenant's queue.
            out.append(
                Problem(
                    f"{path}.queue",
                    f"queue {did.queue_id} belongs to tenant {owner}, not {did.tenant_id}",
                )
            )
    endpoints: dict[str, str] = {}
    for agent_id, (t, agent, paths) in agents.items():
        if agent.endpoint in endpoints:
            out.append(
                Problem(
                    t.at("endpoint"),
                    f"{agent.endpoint} is also agent {endpoints[agent.endpoint]}'s",
                )
            )
        endpoints[agent.endpoint] = agent_id
        for member, path in zip(agent.memberships, paths, strict=True):
            if member.queue_id not in declared_queues:
                out.append(Problem(path, f"unknown queue {member.queue_id!r}"))
    return out


# -- rendering ------------------------------------------------------------------------------


class _Sub(dict[str, Any]):
    """Renders as its own [table]."""


class _Tables(list[dict[str, Any]]):
    """Renders as [[array of tables]]."""


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _clock(t: time, *, end: bool = False) -> str:
    if end and t == time(0):
        return "24:00"
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


def _hours_doc(hours: BusinessHours) -> dict[str, Any]:
    per_day: list[list[str]] = [[] for _ in _DAYS]
    for w in sorted(hours.windows, key=lambda w: (w.weekday, w.start, w.end)):
        whole_day = w.start == w.end
        per_day[w.weekday].append(
            "00:00-24:00" if whole_day else f"{_clock(w.start)}-{_clock(w.end, end=True)}"
        )
    doc: dict[str, Any] = {}
    day = 0
    while day < 7:
        last = day
        while last + 1 < 7 and per_day[last + 1] == per_day[day]:
            last += 1
        if per_day[day]:
            key = _DAYS[day] if last == day else f"{_DAYS[day]}-{_DAYS[last]}"
            ranges = per_day[day]
            doc[key] = ranges[0] if len(ranges) == 1 else list(ranges)
        day = last + 1
    if hours.holidays:
        doc["holidays"] = sorted(hours.holidays)
    return doc


def _tenant_doc(tc: TenantConfig) -> dict[str, Any]:
    t = tc.tenant
    c, r = t.consent, t.recording
    doc: dict[str, Any] = {
        "name": t.name,
        "timezone": t.timezone,
        "greeting": list(t.greeting),
        "consent_policy": c.policy.value,
        "consent_agree_digit": c.agree_digit,
        "consent_opt_out_digit": c.opt_out_digit,
        "consent_timeout_s": _seconds(c.answer_timeout_ms),
        "consent_prompt_version": c.prompt_version,
    }
    if c.prompt:  # absent: the policy's stock prompt
        doc["consent_prompt"] = list(c.prompt)
    doc["recording_formats"] = list(r.formats)
    doc["recording_withdrawal"] = r.withdrawal.value
    doc["recording_retention_days"] = r.retention_days
    if t.business_hours is not None:
        doc["hours"] = _Sub(_hours_doc(t.business_hours))
    return doc


def _did_doc(d: DidConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {"number": d.number}
    if d.queue_id is not None:
        doc["queue"] = d.queue_id
    if d.label is not None:
        doc["label"] = d.label
    return doc


def _relax_doc(r: Relaxation) -> dict[str, Any]:
    return {"after_s": _seconds(r.after_ms)} | (
        {"optional": True} if r.optional else {"min_level": r.min_level}
    )


def _queue_doc(q: Queue) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tenant": q.tenant_id,
        "name": q.name,
        "strategy": q.strategy.value,
        "ring_timeout_s": _seconds(q.ring_timeout_ms),
        "wrapup_s": _seconds(q.wrapup_ms),
    }
    if q.max_wait_ms is not None:
        doc["max_wait_s"] = _seconds(q.max_wait_ms)
    if q.max_callers is not None:
        doc["max_callers"] = q.max_callers
    doc["service_level_s"] = _seconds(q.service_level_ms)
    doc["default_priority"] = q.default_priority
    if q.skills:
        doc["skills"] = _Tables(
            {"skill": s.skill, "min_level": s.min_level}
            | ({"relax": [_relax_doc(r) for r in s.relaxations]} if s.relaxations else {})
            for s in q.skills
        )
    if q.priority_rules:
        doc["priority"] = _Tables(
            {"priority": r.priority}
            | ({"caller_prefix": r.caller_prefix} if r.caller_prefix else {})
            | ({"did": r.did} if r.did else {})
            for r in q.priority_rules
        )
    if q.overflow:
        doc["overflow"] = _Tables(_overflow_doc(o) for o in q.overflow)
    a = q.announcements
    doc["announcements"] = _Sub(
        hold_music=a.hold_music,
        position=a.position,
        estimated_wait=a.estimated_wait,
        first_after_s=_seconds(a.first_after_ms),
        every_s=_seconds(a.every_ms),
    )
    return doc


def _overflow_doc(o: OverflowRule) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if o.after_ms is not None:
        doc["after_s"] = _seconds(o.after_ms)
    if o.when_unstaffed:
        doc["when_unstaffed"] = True
    if o.queue_id is not None:
        doc["queue"] = o.queue_id
    if o.dialplan_context is not None:
        doc["context"] = o.dialplan_context
    return doc


def _membership_doc(m: QueueMembership) -> str | dict[str, Any]:
    extra = {
        key: value
        for key, value, default in (
            ("penalty", m.penalty, 0),
            ("order", m.order, 0),
            ("weight", m.weight, 1),
        )
        if value != default
    }
    return {"queue": m.queue_id} | extra if extra else m.queue_id


def _agent_doc(a: AgentProfile) -> dict[str, Any]:
    return {
        "name": a.name,
        "endpoint": a.endpoint,
        "recording_consent": a.recording_consent,
        "skills": dict(sorted(a.skills.items())),
        "queues": [_membership_doc(m) for m in a.memberships],
    }


def _value(value: Any) -> str:
    """A TOML inline value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\" \\ \n \uXXXX ...) are all valid in TOML basic strings.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__}")


def _emit(out: list[str], header: str, doc: Mapping[str, Any], *, array: bool = False) -> None:
    out.append("")
    out.append(f"[[{header}]]" if array else f"[{header}]")
    for key, value in doc.items():
        if not isinstance(value, _Sub | _Tables):
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in doc.items():
        if isinstance(value, _Sub):
            _emit(out, f"{header}.{_key(key)}", value)
        elif isinstance(value, _Tables):
            for item in value:
                _emit(out, f"{header}.{_key(key)}", item, array=True)


def render(config: PbxConfig) -> str:
    """The config as pbx.toml: sections sorted by id, every setting explicit."""
    out: list[str] = ["# pbx.toml: tenants, DIDs, queues and agents (pbxctl config show)"]
    dids_of: dict[str, list[DidConfig]] = {}
    for d in config.dids:
        dids_of.setdefault(d.tenant_id, []).append(d)
    for tc in config.tenants:
        doc = _tenant_doc(tc)
        if tc.id in dids_of:
            doc["dids"] = _Tables(_did_doc(d) for d in dids_of[tc.id])
        _emit(out, f"tenants.{_key(tc.id)}", doc)
    for q in config.queues:
        _emit(out, f"queues.{_key(q.id)}", _queue_doc(q))
    for a in config.agents:
        _emit(out, f"agents.{_key(a.id)}", _agent_doc(a))
    return "\n".join(out) + "\n"


# -- diff -----------------------------------------------------------------------------------

Kind = Literal["tenant", "did", "queue", "agent"]
_KIND_ORDER: dict[str, int] = {"tenant": 0, "did": 1, "queue": 2, "agent": 3}


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a plan: '+ queue acme-sales', '~ agent anna: skills.polish 7 -> 8',
    '- did 48220000'. A changed entity gets one line per changed setting."""

    op: Literal["+", "~", "-"]
    kind: Kind
    id: str
    detail: str = ""
    note: str = field(default="", compare=False)

    def __str__(self) -> str:
        text = f"{self.op} {self.kind} {self.id}"
        if self.detail:
            text += f": {self.detail}"
        if self.note:
            text += f" ({self.note})"
        return text


def _plain(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (_plain(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
        for k, v in doc.items()
    }


def _tenant_view(tc: TenantConfig) -> dict[str, Any]:
    return _plain(_tenant_doc(tc))


def _did_view(d: DidConfig) -> dict[str, Any]:
    doc = _did_doc(d)
    del doc["number"]
    return {"tenant": d.tenant_id} | doc


def _queue_view(q: Queue) -> dict[str, Any]:
    doc = _plain(_queue_doc(q))
    # Keyed by skill, so changing one requirement reads as that skill's change.
    doc["skills"] = {
        s["skill"]: {"min_level": s["min_level"], "relax": s.get("relax", [])}
        for s in doc.get("skills", [])
    }
    doc.setdefault("priority", [])
    doc.setdefault("overflow", [])
    return doc


def _agent_view(a: AgentProfile) -> dict[str, Any]:
    doc = _agent_doc(a)
    doc["queues"] = {
        m.queue_id: {"penalty": m.penalty, "order": m.order, "weight": m.weight}
        for m in a.memberships
    }
    return doc


def _details(old: Mapping[str, Any], new: Mapping[str, Any], path: str = "") -> list[str]:
    out: list[str] = []
    for key in list(old) + [k for k in new if k not in old]:
        here = _join(path, key)
        if key not in new:
            out.append(f"-{here} {_value(old[key])}")
        elif key not in old:
            out.append(f"+{here} {_value(new[key])}")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            out.extend(_details(old[key], new[key], here))
        elif old[key] != new[key] or type(old[key]) is not type(new[key]):
            out.append(f"{here} {_value(old[key])} -> {_value(new[key])}")
    return out


def diff(old: PbxConfig, new: PbxConfig) -> tuple[Change, ...]:
    """What turns `old` into `new`, tenants first, then DIDs, queues, agents."""
    out: list[Change] = []

    def compare(
        kind: Kind,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        view: Callable[[Any], dict[str, Any]],
    ) -> None:
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                out.append(Change("-", kind, key))
            elif key not in before:
                out.append(Change("+", kind, key))
            else:
                out.extend(
                    Change("~", kind, key, d) for d in _details(view(before[key]), view(after[key]))
                )

    compare("tenant", {t.id: t for t in old.tenants}, {t.id: t for t in new.tenants}, _tenant_view)
    compare("did", {d.number: d for d in old.dids}, {d.number: d for d in new.dids}, _did_view)
    compare("queue", {q.id: q for q in old.queues}, {q.id: q for q in new.queues}, _queue_view)
    compare("agent", {a.id: a for a in old.agents}, {a.id: a for a in new.agents}, _agent_view)
    return tuple(sorted(out, key=lambda c: _KIND_ORDER[c.kind]))  # stable: ids stay sorted
