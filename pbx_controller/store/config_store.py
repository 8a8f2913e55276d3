"""The configuration in the database: read it as a `PbxConfig`, apply a new one.

    read_config(session)  -> PbxConfig     what `config show` and the service see
    apply_config(sessions, desired, dry_run=False) -> [Change]

`apply_config` reads what is there, diffs it with the file
(`configfile.diff`), and writes the difference in one transaction; a
config equal to the stored one writes nothing ("no changes").

Where things live:

- tenant: columns, `business_hours` JSON ({"windows": [{"weekday": 0,
  "start": "08:00", "end": "18:00"}], "holidays": ["2026-12-25"]}), the
  greeting sounds joined with "&" in `greeting_sound`. Consent rules in
  `consent_*` columns (the prompt joined with "&" like the greeting, NULL
  for the policy's stock prompt), recording rules in `recording_*` columns
  (`recording_formats` comma-separated: "", "mp3", "opus", "mp3,opus").
- queue: scalar settings in columns (milliseconds); skills with their
  relaxations, priority and overflow rules, announcements, and each
  member's `order` and `weight` (queue_member has only `penalty`) in the
  `settings` JSON, all in milliseconds.
- agent: columns, `agent_skill` rows, `queue_member` rows (penalty).

Removing what other records point at (CDRs, recordings, contracts, billing
periods, the agent state log: every foreign key in the metadata is
checked, so a new table is covered without touching this module):

- tenant: deactivated (`active = false`) instead of deleted; its DIDs are
  released (deleted; CDRs keep the dialled number as text), its queues
  removed as below. A tenant nothing points at is deleted.
- queue: the table has no `active` column, so a queue with CDRs is retired:
  `settings.retired = true`, members and DID links dropped, and its name
  set to `~<id>` so the name is free again (names are unique per tenant).
  Its id stays taken; it cannot move to another tenant. Otherwise deleted.
- agent: deactivated (`active = false`), memberships dropped, endpoint set
  to `~<id>` so a new agent can take the phone. Otherwise deleted.

A deactivated tenant or agent, or a retired queue, named again in the file
comes back with the file's settings ("+ tenant beta (reactivated)").
Rows that are inactive or retired are invisible to `read_config`, and so to
`config show` and the service.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.configfile import (
    DEFAULT_GREETING,
    DEFAULT_MAX_WAIT_MS,
    RESERVED_PREFIX,
    Change,
    ConfigFileError,
    DidConfig,
    PbxConfig,
    Problem,
    TenantConfig,
    diff,
    key_path,
)
from pbx_controller.core.consent import (
    ConsentPolicy,
    ConsentRules,
    RecordingRules,
    WithdrawalPolicy,
)
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    BusinessHours,
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
from pbx_controller.store.models import Base

__all__ = [
    "SchemaMissingError",
    "StoredConfigError",
    "UnknownTenantError",
    "apply_config",
    "load_config",
    "read_config",
    "set_consent_policy",
]

_T = Base.metadata.tables
TENANT, DID, QUEUE, AGENT = _T["tenant"], _T["did"], _T["queue"], _T["agent"]
AGENT_SKILL, QUEUE_MEMBER = _T["agent_skill"], _T["queue_member"]

# Serialises concurrent applies on PostgreSQL (SQLite has a single writer).
_APPLY_LOCK_KEY = 0x70627863  # "pbxc"


class StoredConfigError(ValueError):
    """The database holds configuration the model rejects (written by hand or
    by another tool); the message names the row."""


class SchemaMissingError(RuntimeError):
    """The database has no tables yet: `pbxctl db upgrade` first."""


class UnknownTenantError(LookupError):
    """No active tenant has that id."""


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rows:
    """Every configuration row, active or not, as plain mappings."""

    tenants: Mapping[str, Mapping[str, Any]]
    dids: Mapping[str, Mapping[str, Any]]
    queues: Mapping[str, Mapping[str, Any]]
    agents: Mapping[str, Mapping[str, Any]]
    skills: Mapping[str, Mapping[str, int]]  # agent -> skill -> level
    members: Mapping[str, Mapping[str, int]]  # agent -> queue -> penalty


async def _require_schema(session: AsyncSession) -> None:
    connection = await session.connection()
    if not await connection.run_sync(lambda c: sa.inspect(c).has_table("queue_member")):
        raise SchemaMissingError("the database has no tables: run `pbxctl db upgrade` first")


async def _load_rows(session: AsyncSession) -> _Rows:
    await _require_schema(session)

    async def rows(table: sa.Table, key: str) -> dict[str, Mapping[str, Any]]:
        result = await session.execute(sa.select(table))
        return {row[key]: dict(row) for row in result.mappings()}

    skills: dict[str, dict[str, int]] = {}
    for agent_id, skill, level in await session.execute(
        sa.select(AGENT_SKILL.c.agent_id, AGENT_SKILL.c.skill, AGENT_SKILL.c.level)
    ):
        skills.setdefault(agent_id, {})[skill] = level
    members: dict[str, dict[str, int]] = {}
    for queue_id, agent_id, penalty in await session.execute(
        sa.select(QUEUE_MEMBER.c.queue_id, QUEUE_MEMBER.c.agent_id, QUEUE_MEMBER.c.penalty)
    ):
        members.setdefault(agent_id, {})[queue_id] = penalty
    return _Rows(
        tenants=await rows(TENANT, "id"),
        dids=await rows(DID, "number"),
        queues=await rows(QUEUE, "id"),
        agents=await rows(AGENT, "id"),
        skills=skills,
        members=members,
    )


async def read_config(session: AsyncSession) -> PbxConfig:
    """The active configuration: what `config show` prints and the service routes with."""
    return _config_from_rows(await _load_rows(session))


async def load_config(sessions: async_sessionmaker[AsyncSession]) -> PbxConfig:
    async with sessions() as session:
        return await read_config(session)


def _config_from_rows(rows: _Rows) -> PbxConfig:
    tenants = {tid: _tenant_from_row(row) for tid, row in rows.tenants.items() if row["active"]}
    queues = {
        qid: _queue_from_row(row)
        for qid, row in rows.queues.items()
        if row["tenant_id"] in tenants and not _settings(row).get("retired")
    }
    dids = [
        DidConfig(
            number,
            row["tenant_id"],
            # A DID whose queue is retired or gone rings the tenant's greeting.
            row["queue_id"] if row["queue_id"] in queues else None,
            row["label"],
        )
        # A DID of a deactivated tenant is treated as unknown.
        for number, row in rows.dids.items()
        if row["tenant_id"] in tenants
    ]
    agents = [
        _agent_from_row(
            row, rows.skills.get(aid, {}), rows.members.get(aid, {}), rows.queues, queues
        )
        for aid, row in rows.agents.items()
        if row["active"]
    ]
    return PbxConfig(tuple(tenants.values()), tuple(dids), tuple(queues.values()), tuple(agents))


def _settings(row: Mapping[str, Any]) -> dict[str, Any]:
    value = row["settings"]
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def _row(kind: str, row_id: str) -> Iterator[None]:
    """Name the row when what the database holds does not make a model."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoredConfigError(f"{kind} {row_id}: stored configuration is invalid: {exc}") from exc


def _tenant_from_row(row: Mapping[str, Any]) -> TenantConfig:
    with _row("tenant", row["id"]):
        greeting = tuple(row["greeting_sound"].split("&")) if row["greeting_sound"] else None
        hours = row["business_hours"]
        formats = row["recording_formats"]
        return TenantConfig(
            Tenant(
                id=row["id"],
                name=row["name"],
                timezone=row["timezone"],
                greeting=greeting or DEFAULT_GREETING,
                business_hours=None if hours is None else _hours_from_json(hours),
                consent=ConsentRules(
                    policy=ConsentPolicy(row["consent_policy"]),
                    agree_digit=row["consent_agree_digit"],
                    opt_out_digit=row["consent_opt_out_digit"],
                    prompt_version=row["consent_prompt_version"],
                    answer_timeout_ms=row["consent_timeout_ms"],
                    prompt=tuple(row["consent_prompt"].split("&")) if row["consent_prompt"] else (),
                ),
                recording=RecordingRules(
                    formats=tuple(formats.split(",")) if formats else (),
                    withdrawal=WithdrawalPolicy(row["recording_withdrawal"]),
                    retention_days=row["recording_retention_days"],
                ),
            )
        )


def _hours_from_json(doc: Mapping[str, Any]) -> BusinessHours:
    windows = sorted(
        (
            OpenWindow(
                int(w["weekday"]), time.fromisoformat(w["start"]), time.fromisoformat(w["end"])
            )
            for w in doc.get("windows", [])
        ),
        key=lambda w: (w.weekday, w.start, w.end),
    )
    holidays = frozenset(date.fromisoformat(d) for d in doc.get("holidays", []))
    return BusinessHours(tuple(windows), holidays)


def _hours_to_json(hours: BusinessHours) -> dict[str, Any]:
    def clock(t: time) -> str:
        return t.isoformat(timespec="seconds" if t.second else "minutes")

    return {
        "windows": [
            {"weekday": w.weekday, "start": clock(w.start), "end": clock(w.end)}
            for w in sorted(hours.windows, key=lambda w: (w.weekday, w.start, w.end))
        ],
        "holidays": sorted(d.isoformat() for d in hours.holidays),
    }


def _queue_from_row(row: Mapping[str, Any]) -> Queue:
    s = _settings(row)
    with _row("queue", row["id"]):
        a = s.get("announcements", {})
        default = Announcements()
        return Queue(
            id=row["id"],
            tenant_id=row["tenant_id"],
            name=row["name"],
            strategy=Strategy(row["strategy"]),
            skills=tuple(
                sorted(
                    (
                        SkillRequirement(
                            r["skill"],
                            r.get("min_level", 1),
                            tuple(
                                Relaxation(
                                    x["after_ms"], x.get("min_level"), x.get("optional", False)
                                )
                                for x in r.get("relax", [])
                            ),
                        )
                        for r in s.get("skills", [])
                    ),
                    key=lambda r: r.skill,
                )
            ),
            ring_timeout_ms=row["ring_timeout_ms"],
            wrapup_ms=row["wrapup_ms"],
            max_wait_ms=row["max_wait_ms"],
            max_callers=row["max_callers"],
            service_level_ms=row["service_level_ms"],
            default_priority=s.get("default_priority", 0),
            priority_rules=tuple(
                PriorityRule(r["priority"], r.get("caller_prefix", ""), r.get("did", ""))
                for r in s.get("priority_rules", [])
            ),
            overflow=tuple(
                OverflowRule(
                    r.get("after_ms"),
                    r.get("when_unstaffed", False),
                    r.get("queue_id"),
                    r.get("dialplan_context"),
                )
                for r in s.get("overflow", [])
            ),
            announcements=Announcements(
                hold_music=a.get("hold_music", default.hold_music),
                position=a.get("position", default.position),
                estimated_wait=a.get("estimated_wait", default.estimated_wait),
                first_after_ms=a.get("first_after_ms", default.first_after_ms),
                every_ms=a.get("every_ms", default.every_ms),
            ),
        )


def _agent_from_row(
    row: Mapping[str, Any],
    skills: Mapping[str, int],
    members: Mapping[str, int],
    queue_rows: Mapping[str, Mapping[str, Any]],
    visible: Mapping[str, Queue],
) -> AgentProfile:
    aid = row["id"]
    memberships = []
    for queue_id, penalty in sorted(members.items()):
        if queue_id not in visible:  # retired, or of a deactivated tenant
            continue
        extra = _settings(queue_rows[queue_id]).get("members", {}).get(aid, {})
        with _row("queue", queue_id):
            memberships.append(
                QueueMembership(queue_id, penalty, extra.get("order", 0), extra.get("weight", 1))
            )
    with _row("agent", aid):
        return AgentProfile(
            aid,
            row["name"],
            row["endpoint"],
            dict(skills),
            tuple(memberships),
            row["recording_consent"],
        )


# -- writing --------------------------------------------------------------------------------


def _tenant_values(tc: TenantConfig) -> dict[str, Any]:
    t = tc.tenant
    hours = t.business_hours
    c, r = t.consent, t.recording
    return {
        "name": t.name,
        "timezone": t.timezone,
        "consent_policy": c.policy.value,
        "consent_agree_digit": c.agree_digit,
        "consent_opt_out_digit": c.opt_out_digit,
        "consent_timeout_ms": c.answer_timeout_ms,
        "consent_prompt_version": c.prompt_version,
        "consent_prompt": "&".join(c.prompt) or None,
        "greeting_sound": "&".join(t.greeting),
        "business_hours": None if hours is None else _hours_to_json(hours),
        "recording_formats": ",".join(r.formats),
        "recording_withdrawal": r.withdrawal.value,
        "recording_retention_days": r.retention_days,
        "active": True,
    }


def _queue_values(q: Queue, members: Mapping[str, QueueMembership]) -> dict[str, Any]:
    a = q.announcements
    settings: dict[str, Any] = {
        "skills": [
            {
                "skill": r.skill,
                "min_level": r.min_level,
                "relax": [
                    {"after_ms": x.after_ms}
                    | ({"optional": True} if x.optional else {"min_level": x.min_level})
                    for x in r.relaxations
                ],
            }
            for r in q.skills
        ],
        "default_priority": q.default_priority,
        "priority_rules": [
            {"priority": r.priority, "caller_prefix": r.caller_prefix, "did": r.did}
            for r in q.priority_rules
        ],
        "overflow": [
            {
                "after_ms": o.after_ms,
                "when_unstaffed": o.when_unstaffed,
                "queue_id": o.queue_id,
                "dialplan_context": o.dialplan_context,
            }
            for o in q.overflow
        ],
        "announcements": {
            "hold_music": a.hold_music,
            "position": a.position,
            "estimated_wait": a.estimated_wait,
            "first_after_ms": a.first_after_ms,
            "every_ms": a.every_ms,
        },
        # queue_member has only penalty; routing order and weight live here.
        "members": {
            agent_id: {"order": m.order, "weight": m.weight}
            for agent_id, m in sorted(members.items())
            if (m.order, m.weight) != (0, 1)
        },
    }
    return {
        "tenant_id": q.tenant_id,
        "name": q.name,
        "strategy": q.strategy.value,
        "ring_timeout_ms": q.ring_timeout_ms,
        "wrapup_ms": q.wrapup_ms,
        "max_wait_ms": DEFAULT_MAX_WAIT_MS if q.max_wait_ms is None else q.max_wait_ms,
        "max_callers": q.max_callers,
        "service_level_ms": q.service_level_ms,
        "settings": settings,
    }


def _agent_values(a: AgentProfile) -> dict[str, Any]:
    return {
        "name": a.name,
        "endpoint": a.endpoint,
        "recording_consent": a.recording_consent,
        "active": True,
    }


def _placeholder(row_id: str) -> str:
    return (RESERVED_PREFIX + row_id)[:64]


def _changed(row: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if row[k] != v}


async def _referrers(
    session: AsyncSession, target: sa.Table, ids: Iterable[str], managed: set[str]
) -> dict[str, set[str]]:
    """id -> names of tables whose rows point at it, apart from the `managed`
    ones this module rewrites itself."""
    wanted = sorted(set(ids))
    found: dict[str, set[str]] = {i: set() for i in wanted}
    if not wanted:
        return found
    for table in Base.metadata.sorted_tables:
        if table.name in managed:
            continue
        for fk in table.foreign_keys:
            if fk.column.table is not target or fk.column.name != "id":
                continue
            column = fk.parent
            result = await session.execute(sa.select(column).where(column.in_(wanted)).distinct())
            for (value,) in result:
                found[value].add(table.name)
    return found


@dataclass(frozen=True, slots=True)
class _Plan:
    changes: tuple[Change, ...]
    rows: _Rows
    desired: PbxConfig
    gone_agents: Mapping[str, bool]  # id -> deletable
    gone_queues: Mapping[str, bool]
    gone_tenants: Mapping[str, bool]
    gone_dids: tuple[str, ...]


async def _plan(session: AsyncSession, desired: PbxConfig) -> _Plan:
    rows = await _load_rows(session)
    current = _config_from_rows(rows)
    changes = list(diff(current, desired))
    if not changes:
        return _Plan((), rows, desired, {}, {}, {}, ())
    want_tenants = {t.id for t in desired.tenants}
    want_queues = {q.id: q for q in desired.queues}
    want_agents = {a.id for a in desired.agents}
    want_dids = {d.number for d in desired.dids}

    gone_tenant_ids = {t.id for t in current.tenants} - want_tenants
    current_queue_ids = {q.id for q in current.queues}
    gone_queue_ids = {
        qid
        for qid, row in rows.queues.items()
        if qid not in want_queues
        and (qid in current_queue_ids or row["tenant_id"] in gone_tenant_ids)
    }
    gone_agent_ids = {a.id for a in current.agents} - want_agents
    gone_dids = tuple(sorted({d.number for d in current.dids} - want_dids))

    queue_refs = await _referrers(
        session,
        QUEUE,
        gone_queue_ids | (want_queues.keys() & rows.queues.keys()),
        {"did", "queue_member"},
    )
    problems = [
        Problem(
            key_path("queues", qid, "tenant"),
            f"queue {qid} has {', '.join(sorted(queue_refs[qid]))} rows of tenant "
            f"{rows.queues[qid]['tenant_id']}: it cannot move to tenant {q.tenant_id}; "
            "give the queue a new id",
        )
        for qid, q in want_queues.items()
        if qid in rows.queues and rows.queues[qid]["tenant_id"] != q.tenant_id and queue_refs[qid]
    ]
    if problems:
        raise ConfigFileError(problems)
    agent_refs = await _referrers(session, AGENT, gone_agent_ids, {"agent_skill", "queue_member"})
    tenant_refs = await _referrers(session, TENANT, gone_tenant_ids, {"did", "queue"})
    for qid in gone_queue_ids:
        tenant_id = rows.queues[qid]["tenant_id"]
        if queue_refs[qid] and tenant_id in tenant_refs:
            tenant_refs[tenant_id].add("queue")  # the retired queue still points at it

    def kept(verb: str, refs: set[str]) -> str:
        return f"{verb}: kept for {', '.join(sorted(refs))}" if refs else ""

    annotated = []
    for c in changes:
        if c.op == "+":
            inactive = (c.kind == "tenant" and c.id in rows.tenants) or (
                c.kind == "agent" and c.id in rows.agents
            )
            if inactive:
                c = replace(c, note="reactivated")
            elif c.kind == "queue" and c.id in rows.queues:
                c = replace(c, note="restored")
        elif c.op == "-" and c.kind == "tenant":
            c = replace(c, note=kept("deactivated", tenant_refs[c.id]))
        elif c.op == "-" and c.kind == "queue":
            c = replace(c, note=kept("retired", queue_refs[c.id]))
        elif c.op == "-" and c.kind == "agent":
            c = replace(c, note=kept("deactivated", agent_refs[c.id]))
        annotated.append(c)
    return _Plan(
        changes=tuple(annotated),
        rows=rows,
        desired=desired,
        gone_agents={a: not agent_refs[a] for a in gone_agent_ids},
        gone_queues={q: not queue_refs[q] for q in gone_queue_ids},
        gone_tenants={t: not tenant_refs[t] for t in gone_tenant_ids},
        gone_dids=gone_dids,
    )


async def _execute(session: AsyncSession, plan: _Plan) -> None:
    """Write the plan in an order every foreign key and unique constraint
    accepts at each statement (PostgreSQL checks them immediately)."""
    rows, desired = plan.rows, plan.desired
    execute = session.execute

    # 1. Agents, queues and DIDs that leave.
    for aid, deletable in sorted(plan.gone_agents.items()):
        await execute(sa.delete(QUEUE_MEMBER).where(QUEUE_MEMBER.c.agent_id == aid))
        if deletable:
            await execute(sa.delete(AGENT_SKILL).where(AGENT_SKILL.c.agent_id == aid))
            await execute(sa.delete(AGENT).where(AGENT.c.id == aid))
        else:
            await execute(
                sa.update(AGENT)
                .where(AGENT.c.id == aid)
                .values(active=False, endpoint=_placeholder(aid))
            )
    for qid, deletable in sorted(plan.gone_queues.items()):
        await execute(sa.delete(QUEUE_MEMBER).where(QUEUE_MEMBER.c.queue_id == qid))
        await execute(sa.update(DID).where(DID.c.queue_id == qid).values(queue_id=None))
        if deletable:
            await execute(sa.delete(QUEUE).where(QUEUE.c.id == qid))
        else:
            settings = _settings(rows.queues[qid]) | {"retired": True, "members": {}}
            await execute(
                sa.update(QUEUE)
                .where(QUEUE.c.id == qid)
                .values(name=_placeholder(qid), settings=settings)
            )
    if plan.gone_dids:
        await execute(sa.delete(DID).where(DID.c.number.in_(plan.gone_dids)))

    # 2. Free unique names that move: a queue name (per tenant) or an endpoint
    #    may pass from one row to another within this apply.
    for q in desired.queues:
        row = rows.queues.get(q.id)
        if row is not None and (row["tenant_id"], row["name"]) != (q.tenant_id, q.name):
            await execute(
                sa.update(QUEUE).where(QUEUE.c.id == q.id).values(name=_placeholder(q.id))
            )
    endpoint_of = {a.id: a.endpoint for a in desired.agents}
    wanted_endpoints = set(endpoint_of.values())
    for aid, row in rows.agents.items():
        moving = aid in endpoint_of and row["endpoint"] != endpoint_of[aid]
        squatting = aid not in endpoint_of and row["endpoint"] in wanted_endpoints
        if moving or squatting:
            await execute(
                sa.update(AGENT).where(AGENT.c.id == aid).values(endpoint=_placeholder(aid))
            )

    # 3. Tenants, queues, agents (skills, memberships), DIDs: insert or update.
    for tc in desired.tenants:
        await _upsert(
            session, TENANT, TENANT.c.id, tc.id, rows.tenants.get(tc.id), _tenant_values(tc)
        )
    members_of: dict[str, dict[str, QueueMembership]] = {}
    for a in desired.agents:
        for m in a.memberships:
            members_of.setdefault(m.queue_id, {})[a.id] = m
    for q in desired.queues:
        row = rows.queues.get(q.id)
        values = _queue_values(q, members_of.get(q.id, {}))
        if row is not None and (row["tenant_id"], row["name"]) != (q.tenant_id, q.name):
            row = {**row, "name": _placeholder(q.id)}  # as step 2 left it
        await _upsert(session, QUEUE, QUEUE.c.id, q.id, row, values)
    for a in desired.agents:
        row = rows.agents.get(a.id)
        if row is not None and row["endpoint"] != a.endpoint:
            row = {**row, "endpoint": _placeholder(a.id)}
        await _upsert(session, AGENT, AGENT.c.id, a.id, row, _agent_values(a))
        await _sync_skills(session, a, rows.skills.get(a.id, {}))
        # Step 1 already deleted the memberships of queues that left.
        have = {q: p for q, p in rows.members.get(a.id, {}).items() if q not in plan.gone_queues}
        await _sync_members(session, a, have)
    for d in desired.dids:
        row = rows.dids.get(d.number)
        if row is not None and row["queue_id"] in plan.gone_queues:
            row = {**row, "queue_id": None}
        values = {"tenant_id": d.tenant_id, "queue_id": d.queue_id, "label": d.label}
        await _upsert(session, DID, DID.c.number, d.number, row, values)

    # 4. Tenants that leave, once nothing of theirs remains but their records.
    for tid, deletable in sorted(plan.gone_tenants.items()):
        if deletable:
            await execute(sa.delete(TENANT).where(TENANT.c.id == tid))
        else:
            await execute(sa.update(TENANT).where(TENANT.c.id == tid).values(active=False))


async def _upsert(
    session: AsyncSession,
    table: sa.Table,
    key: sa.Column[Any],
    key_value: str,
    row: Mapping[str, Any] | None,
    values: Mapping[str, Any],
) -> None:
    if row is None:
        await session.execute(sa.insert(table).values({key.name: key_value, **values}))
    elif changed := _changed(row, values):
        await session.execute(sa.update(table).where(key == key_value).values(changed))


async def _sync_skills(session: AsyncSession, agent: AgentProfile, have: Mapping[str, int]) -> None:
    want = dict(agent.skills)
    drop = sorted(have.keys() - want.keys())
    if drop:
        await session.execute(
            sa.delete(AGENT_SKILL).where(
                AGENT_SKILL.c.agent_id == agent.id, AGENT_SKILL.c.skill.in_(drop)
            )
        )
    for skill, level in sorted(want.items()):
        if skill not in have:
            await session.execute(
                sa.insert(AGENT_SKILL).values(agent_id=agent.id, skill=skill, level=level)
            )
        elif have[skill] != level:
            await session.execute(
                sa.update(AGENT_SKILL)
                .where(AGENT_SKILL.c.agent_id == agent.id, AGENT_SKILL.c.skill == skill)
                .values(level=level)
            )


async def _sync_members(
    session: AsyncSession, agent: AgentProfile, have: Mapping[str, int]
) -> None:
    want = {m.queue_id: m.penalty for m in agent.memberships}
    drop = sorted(have.keys() - want.keys())
    if drop:
        await session.execute(
            sa.delete(QUEUE_MEMBER).where(
                QUEUE_MEMBER.c.agent_id == agent.id, QUEUE_MEMBER.c.queue_id.in_(drop)
            )
        )
    for queue_id, penalty in sorted(want.items()):
        if queue_id not in have:
            await session.execute(
                sa.insert(QUEUE_MEMBER).values(
                    queue_id=queue_id, agent_id=agent.id, penalty=penalty
                )
            )
        elif have[queue_id] != penalty:
            await session.execute(
                sa.update(QUEUE_MEMBER)
                .where(QUEUE_MEMBER.c.agent_id == agent.id, QUEUE_MEMBER.c.queue_id == queue_id)
                .values(penalty=penalty)
            )


async def apply_config(
    sessions: async_sessionmaker[AsyncSession], desired: PbxConfig, *, dry_run: bool = False
) -> tuple[Change, ...]:
    """Make the database hold `desired`, in one transaction, and return what
    changed (empty: nothing to do, nothing written). With `dry_run`, plan
    only. Raises ConfigFileError for what only the database can reveal (a
    queue with CDRs moving to another tenant)."""
    # Closing the session without a commit rolls back: a dry run, no changes
    # or an error leave the database as it was.
    async with sessions() as session:
        connection = await session.connection()
        if connection.dialect.name == "postgresql":
            await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_APPLY_LOCK_KEY)))
        plan = await _plan(session, desired)
        if plan.changes and not dry_run:
            await _execute(session, plan)
            await session.commit()
        return plan.changes


async def set_consent_policy(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, policy: ConsentPolicy
) -> ConsentPolicy:
    """Set one active tenant's consent policy; returns the policy it had.
    Raises UnknownTenantError for an unknown or deactivated tenant."""
    async with sessions() as session:
        await _require_schema(session)
        connection = await session.connection()
        if connection.dialect.name == "postgresql":
            # Not in the middle of a `config apply`.
            await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_APPLY_LOCK_KEY)))
        old = await session.scalar(
            sa.select(TENANT.c.consent_policy).where(TENANT.c.id == tenant_id, TENANT.c.active)
        )
        if old is None:
            raise UnknownTenantError(tenant_id)
        if old != policy.value:
            await session.execute(
                sa.update(TENANT)
                .where(TENANT.c.id == tenant_id)
                .values(consent_policy=policy.value)
            )
            await session.commit()
        return ConsentPolicy(old)
