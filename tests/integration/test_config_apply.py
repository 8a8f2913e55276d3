"""`pbxctl config apply` / `config show` on SQLite and PostgreSQL: the file
lands in the database, a second apply changes nothing, a change is exactly
that change, removals never break a foreign key (what CDRs point at is
deactivated or retired, not deleted), and the service's directory is the
file's."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.cli.main import main
from pbx_controller.configfile import ConfigFileError, PbxConfig, parse, render
from pbx_controller.core.consent import (
    ConsentPolicy,
    ConsentRules,
    RecordingRules,
    WithdrawalPolicy,
)
from pbx_controller.store import models as m
from pbx_controller.store.config_store import apply_config, load_config
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.directory import load_directory

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "pbx.toml").read_text()
Sessions = async_sessionmaker[AsyncSession]
Pbxctl = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def pbxctl(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Pbxctl:
    """`pbxctl ARGS...` in a worker thread (it runs its own event loop):
    returns (exit status, stdout, stderr)."""
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    monkeypatch.setenv("PBX_DATABASE__URL", database_url)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        async with asyncio.timeout(60):
            status = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run


async def apply(sessions: Sessions, text: str, *, dry_run: bool = False) -> list[str]:
    return [str(c) for c in await apply_config(sessions, parse(text), dry_run=dry_run)]


async def add_cdr(sessions: Sessions, tenant: str, queue: str | None, agent: str | None) -> None:
    at = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    async with sessions.begin() as session:
        session.add(
            m.Cdr(
                call_id=uuid.uuid4(),
                tenant_id=tenant,
                direction="inbound",
                did="48221001",
                caller="48600100200",
                callee="48221001",
                queue_id=queue,
                agent_id=agent,
                arrived_at=at,
                answered_at=at + dt.timedelta(seconds=5),
                ended_at=at + dt.timedelta(seconds=65),
                disposition="answered",
                hangup_side="caller",
                consent="granted",
            )
        )


async def scalar(sessions: Sessions, query: sa.Select[Any]) -> object:
    async with sessions() as session:
        return await session.scalar(query)


async def test_apply_creates_then_changes_nothing(sessions: Sessions) -> None:
    assert await apply(sessions, EXAMPLE, dry_run=True) == [
        "+ tenant acme",
        "+ tenant beta",
        "+ did 48221001",
        "+ did 48221002",
        "+ did 48221003",
        "+ queue acme-claims",
        "+ queue acme-sales",
        "+ queue beta-support",
        "+ agent anna",
        "+ agent bartek",
        "+ agent celina",
        "+ agent dawid",
    ]
    assert await load_config(sessions) == PbxConfig(), "a dry run wrote"
    assert len(await apply(sessions, EXAMPLE)) == 12
    assert await load_config(sessions) == parse(EXAMPLE)
    assert await apply(sessions, EXAMPLE) == []
    # Stored as documented: columns in ms, the rest in the settings JSON.
    async with sessions() as session:
        sales = await session.get_one(m.Queue, "acme-sales")
        anna = await session.get_one(m.QueueMember, ("beta-support", "anna"))
        beta = await session.get_one(m.Queue, "beta-support")
    assert (sales.ring_timeout_ms, sales.wrapup_ms, sales.name) == (15_000, 10_000, "Sales")
    assert sales.settings["skills"][0]["relax"] == [
        {"after_ms": 30_000, "min_level": 3},
        {"after_ms": 60_000, "optional": True},
    ]
    assert anna.penalty == 1
    assert beta.settings["members"]["anna"] == {"order": 2, "weight": 1}


async def test_a_changed_skill_is_exactly_that_change(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    changed = EXAMPLE.replace("skills = {polish = 8,", "skills = {polish = 7,")
    assert changed != EXAMPLE
    assert await apply(sessions, changed) == ["~ agent anna: skills.polish 8 -> 7"]
    level = await scalar(
        sessions,
        sa.select(m.AgentSkill.level).where(
            m.AgentSkill.agent_id == "anna", m.AgentSkill.skill == "polish"
        ),
    )
    assert level == 7
    assert await apply(sessions, changed) == []


async def test_dry_run_writes_nothing(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    changed = EXAMPLE.replace("ring_timeout_s = 15", "ring_timeout_s = 25")
    plan = ["~ queue acme-sales: ring_timeout_s 15 -> 25"]
    assert await apply(sessions, changed, dry_run=True) == plan
    assert await apply(sessions, changed, dry_run=True) == plan
    assert await load_config(sessions) == parse(EXAMPLE)


def without_agent(text: str, agent: str) -> str:
    start = text.index(f"[agents.{agent}]")
    end = text.find("\n[", start + 1)
    return text[:start] + (text[end + 1 :] if end != -1 else "")


async def test_removing_an_agent(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    # Nothing points at celina: she is deleted, skills and memberships with her.
    assert await apply(sessions, without_agent(EXAMPLE, "celina")) == ["- agent celina"]
    assert await scalar(sessions, sa.select(sa.func.count()).where(m.Agent.id == "celina")) == 0
    assert (
        await scalar(sessions, sa.select(sa.func.count()).where(m.AgentSkill.agent_id == "celina"))
        == 0
    )
    # Anna took a call: she is deactivated, and her phone is free for someone else.
    await add_cdr(sessions, "acme", "acme-sales", "anna")
    text = without_agent(without_agent(EXAMPLE, "celina"), "anna")
    assert await apply(sessions, text) == ["- agent anna (deactivated: kept for cdr)"]
    async with sessions() as session:
        anna = await session.get_one(m.Agent, "anna")
        members = (
            await session.scalars(sa.select(m.QueueMember).where(m.QueueMember.agent_id == "anna"))
        ).all()
    assert (anna.active, anna.endpoint, members) == (False, "~anna", [])
    config = await load_config(sessions)
    assert [a.id for a in config.agents] == ["bartek", "dawid"]
    newcomer = text + '\n[agents.ewa]\nname = "Ewa"\nendpoint = "PJSIP/agent-anna"\n'
    assert await apply(sessions, newcomer) == ["+ agent ewa"]
    # Naming her again brings her back, with the file's settings and her phone.
    back = without_agent(EXAMPLE, "celina")
    assert await apply(sessions, back) == [
        "+ agent anna (reactivated)",
        "- agent ewa",
    ]
    assert {a.id: a for a in (await load_config(sessions)).agents}["anna"] == {
        a.id: a for a in parse(back).agents
    }["anna"]


def without_tenant_beta(text: str) -> str:
    """The example without Beta, its DID and its queue, and no agent in it."""
    start = text.index("# -- Beta Software")
    end = text.index("# -- Agents")
    text = text[:start] + text[end:]
    for member in (
        ', {queue = "beta-support", penalty = 1, order = 2}',
        ', {queue = "beta-support", penalty = 2, order = 3}',
    ):
        text = text.replace(member, "")
    return text.replace('queues = [{queue = "beta-support", order = 1}]', "queues = []")


async def test_a_tenant_with_cdrs_is_deactivated_not_deleted(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    await add_cdr(sessions, "beta", "beta-support", "celina")
    text = without_tenant_beta(EXAMPLE)
    assert await apply(sessions, text) == [
        "- tenant beta (deactivated: kept for cdr, queue)",
        "- did 48221002",
        "- queue beta-support (retired: kept for cdr)",
        "~ agent anna: -queues.beta-support {penalty = 1, order = 2, weight = 1}",
        "~ agent celina: -queues.beta-support {penalty = 0, order = 1, weight = 1}",
        "~ agent dawid: -queues.beta-support {penalty = 2, order = 3, weight = 1}",
    ]
    async with sessions() as session:
        beta = await session.get_one(m.Tenant, "beta")
        queue = await session.get_one(m.Queue, "beta-support")
        cdrs = await session.scalar(sa.select(sa.func.count()).select_from(m.Cdr))
    assert (beta.active, queue.settings.get("retired"), queue.name, cdrs) == (
        False,
        True,
        "~beta-support",
        1,
    )
    directory = await load_directory(sessions)
    assert directory.tenant_for_did("48221002") is None
    assert set(directory.tenants) == {"acme"}
    assert set(directory.queues) == {"acme-claims", "acme-sales"}
    assert await apply(sessions, text) == []

    # Back in the file: reactivated, the queue restored, a new DID owner works.
    assert await apply(sessions, EXAMPLE) == [
        "+ tenant beta (reactivated)",
        "+ did 48221002",
        "+ queue beta-support (restored)",
        "~ agent anna: +queues.beta-support {penalty = 1, order = 2, weight = 1}",
        "~ agent celina: +queues.beta-support {penalty = 0, order = 1, weight = 1}",
        "~ agent dawid: +queues.beta-support {penalty = 2, order = 3, weight = 1}",
    ]
    assert await load_config(sessions) == parse(EXAMPLE)


async def test_a_tenant_without_records_is_deleted(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    text = without_tenant_beta(EXAMPLE)
    changes = await apply(sessions, text)
    assert changes[:3] == ["- tenant beta", "- did 48221002", "- queue beta-support"]
    assert await scalar(sessions, sa.select(sa.func.count()).where(m.Tenant.id == "beta")) == 0
    assert (
        await scalar(sessions, sa.select(sa.func.count()).where(m.Queue.id == "beta-support")) == 0
    )
    assert await load_config(sessions) == parse(text)


async def test_names_and_endpoints_can_swap(sessions: Sessions) -> None:
    """Unique queue names and endpoints may pass between rows in one apply
    (PostgreSQL checks uniqueness at every statement)."""
    await apply(sessions, EXAMPLE)
    swapped = (
        EXAMPLE.replace('name = "Sales"', 'name = "TMP"')
        .replace('name = "Claims"', 'name = "Sales"')
        .replace('name = "TMP"', 'name = "Claims"')
        .replace('"PJSIP/agent-anna"', '"PJSIP/TMP"')
        .replace('"PJSIP/agent-bartek"', '"PJSIP/agent-anna"')
        .replace('"PJSIP/TMP"', '"PJSIP/agent-bartek"')
    )
    assert await apply(sessions, swapped) == [
        '~ queue acme-claims: name "Claims" -> "Sales"',
        '~ queue acme-sales: name "Sales" -> "Claims"',
        '~ agent anna: endpoint "PJSIP/agent-anna" -> "PJSIP/agent-bartek"',
        '~ agent bartek: endpoint "PJSIP/agent-bartek" -> "PJSIP/agent-anna"',
    ]
    assert await load_config(sessions) == parse(swapped)


async def test_load_directory_is_the_files_model(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    directory = await load_directory(sessions)
    assert directory == parse(EXAMPLE).directory()
    sales = directory.queue_for_did("48221001")
    assert sales is not None
    assert sales.requirements_after(0) == (("polish", 5), ("sales", 4))
    assert sales.requirements_after(60_000) == (("sales", 2),)
    anna = directory.agent_for_endpoint("agent-anna")
    assert anna is not None
    assert dict(anna.skills) == {"polish": 8, "english": 5, "sales": 6}
    acme = directory.tenants["acme"]
    assert acme.business_hours is not None
    assert acme.business_hours.is_open(
        dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC), "Europe/Warsaw"
    )
    assert not acme.business_hours.is_open(
        dt.datetime(2026, 12, 25, 10, tzinfo=dt.UTC), "Europe/Warsaw"
    )


async def test_rows_written_elsewhere_load_too(sessions: Sessions) -> None:
    """A tenant and DID added by hand (as the demo does): default greeting,
    no hours, no queue."""
    async with sessions.begin() as session:
        session.add(m.Tenant(id="smallco", name="SmallCo"))
        await session.flush()
        session.add(m.Did(number="48221009", tenant_id="smallco"))
    directory = await load_directory(sessions)
    tenant = directory.tenant_for_did("48221009")
    assert tenant is not None
    assert tenant.greeting == ("sound:hello-world",)
    assert directory.queue_for_did("48221009") is None


async def test_consent_and_recording_rules_are_stored_and_loaded(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    async with sessions() as session:
        acme = await session.get_one(m.Tenant, "acme")
        beta = await session.get_one(m.Tenant, "beta")
    assert (
        acme.consent_policy,
        acme.consent_agree_digit,
        acme.consent_opt_out_digit,
        acme.consent_timeout_ms,
        acme.consent_prompt_version,
        acme.consent_prompt,
        acme.recording_formats,
        acme.recording_withdrawal,
        acme.recording_retention_days,
    ) == (
        "notify",
        "1",
        "9",
        5_000,
        "2026-03",
        "sound:conf-now-recording&sound:vm-press&digits:9",
        "mp3",
        "keep_until_withdrawal",
        90,
    )
    assert (beta.consent_policy, beta.consent_timeout_ms, beta.consent_prompt) == (
        "opt_in",
        8_000,
        None,
    )
    # What the engine gets.
    tenants = (await load_directory(sessions)).tenants
    assert tenants["acme"].consent == ConsentRules(
        ConsentPolicy.NOTIFY,
        prompt_version="2026-03",
        prompt=("sound:conf-now-recording", "sound:vm-press", "digits:9"),
    )
    assert tenants["acme"].recording == RecordingRules(
        ("mp3",), WithdrawalPolicy.KEEP_UNTIL_WITHDRAWAL, 90
    )
    assert tenants["beta"].consent == ConsentRules(ConsentPolicy.OPT_IN, answer_timeout_ms=8_000)
    assert tenants["beta"].recording == RecordingRules((), WithdrawalPolicy.DELETE, 30)

    # A change is exactly that change, both ways, and lands in the row.
    changed = (
        EXAMPLE.replace('recording_formats = ["mp3"]', 'recording_formats = ["opus", "mp3"]')
        .replace('consent_opt_out_digit = "9"', 'consent_opt_out_digit = "#"')
        .replace("consent_timeout_s = 8", "consent_timeout_s = 7.5")
    )
    assert await apply(sessions, changed) == [
        '~ tenant acme: consent_opt_out_digit "9" -> "#"',
        '~ tenant acme: recording_formats ["mp3"] -> ["mp3", "opus"]',
        "~ tenant beta: consent_timeout_s 8 -> 7.5",
    ]
    assert await load_config(sessions) == parse(changed)
    assert (
        await scalar(sessions, sa.select(m.Tenant.recording_formats).where(m.Tenant.id == "acme"))
        == "mp3,opus"
    )
    assert await apply(sessions, changed) == []
    without_prompt = changed.replace("consent_prompt = [", "# consent_prompt = [")
    assert await apply(sessions, without_prompt) == [
        '~ tenant acme: -consent_prompt ["sound:conf-now-recording", "sound:vm-press", "digits:9"]'
    ]
    assert (
        await scalar(sessions, sa.select(m.Tenant.consent_prompt).where(m.Tenant.id == "acme"))
        is None
    )
    assert await apply(sessions, EXAMPLE) != []
    assert await load_config(sessions) == parse(EXAMPLE)


async def test_a_new_tenant_asks_for_consent(sessions: Sessions) -> None:
    """opt_in is the default from the file and for rows written by hand;
    pbx.toml's own default used to be notify."""
    await apply(sessions, '[tenants.newco]\nname = "NewCo"\n')
    async with sessions.begin() as session:
        await session.execute(sa.text("INSERT INTO tenant (id, name) VALUES ('byhand', 'By hand')"))
        await session.execute(
            sa.text("INSERT INTO tenant (id, name, consent_policy) VALUES ('old', 'Old', 'notify')")
        )
    # A file written for the old default now asks for opt_in, visibly.
    old_file = '[tenants.newco]\nname = "NewCo"\n[tenants.old]\nname = "Old"\n'
    assert await apply(sessions, old_file, dry_run=True) == [
        "- tenant byhand",
        '~ tenant old: consent_policy "notify" -> "opt_in"',
    ]
    policies = await scalar(
        sessions, sa.select(sa.func.count()).where(m.Tenant.consent_policy == "opt_in")
    )
    assert policies == 2
    tenants = (await load_directory(sessions)).tenants
    assert (
        tenants["newco"].consent == tenants["byhand"].consent == ConsentRules(ConsentPolicy.OPT_IN)
    )
    assert tenants["byhand"].recording == RecordingRules()


async def test_a_did_may_not_name_another_tenants_queue(sessions: Sessions) -> None:
    await apply(sessions, EXAMPLE)
    crossed = EXAMPLE.replace(
        'number = "48221002"\nqueue = "beta-support"', 'number = "48221002"\nqueue = "acme-sales"'
    )
    with pytest.raises(ConfigFileError, match=r"tenants\.beta\.dids\[0\]\.queue: queue acme-sales"):
        parse(crossed)
    # A queue without calls may move to another tenant; one with calls may
    # not (their CDRs name the old tenant), which only the database can tell.
    moved = EXAMPLE.replace('tenant = "beta"', 'tenant = "acme"').replace(
        'number = "48221002"\nqueue = "beta-support"', 'number = "48221002"'
    )
    assert await apply(sessions, moved, dry_run=True) == [
        '~ did 48221002: -queue "beta-support"',
        '~ queue beta-support: tenant "beta" -> "acme"',
    ]
    await add_cdr(sessions, "beta", "beta-support", None)
    with pytest.raises(
        ConfigFileError,
        match=r"^queues\.beta-support\.tenant: queue beta-support has cdr rows of tenant beta",
    ):
        await apply(sessions, moved)
    assert await load_config(sessions) == parse(EXAMPLE)


async def test_pbxctl_apply_and_show(sessions: Sessions, pbxctl: Pbxctl, tmp_path: Path) -> None:
    run = pbxctl
    path = tmp_path / "pbx.toml"
    path.write_text(EXAMPLE)
    status, out, _ = await run("config", "apply", str(path), "--dry-run")
    assert (status, out.splitlines()[-1]) == (0, "12 changes (dry run: nothing written)")
    status, out, _ = await run("config", "apply", str(path))
    assert (status, out.splitlines()[0], out.splitlines()[-1]) == (
        0,
        "+ tenant acme",
        "12 changes applied",
    )
    assert await run("config", "apply", str(path)) == (0, "no changes\n", "")

    status, shown, _ = await run("config", "show")
    assert status == 0
    assert parse(shown) == parse(EXAMPLE)
    assert shown == render(parse(EXAMPLE))
    (tmp_path / "shown.toml").write_text(shown)
    assert await run("config", "apply", str(tmp_path / "shown.toml")) == (0, "no changes\n", "")

    path.write_text(EXAMPLE.replace("min_level = 5", "min_level = 11"))
    status, out, err = await run("config", "apply", str(path))
    assert (status, out) == (2, "")
    problem = "queues.acme-sales.skills[0].min_level: must be at most 10, got 11"
    assert err == f"pbxctl: error: {path}: {problem}\n"


async def test_pbxctl_tenant_set_consent(
    sessions: Sessions, pbxctl: Pbxctl, tmp_path: Path
) -> None:
    run = pbxctl
    await apply(sessions, EXAMPLE)
    assert await run("tenant", "set-consent", "acme", "opt_in") == (
        0,
        "acme: consent_policy notify -> opt_in\n"
        "`pbxctl config reload` for calls to use it; update pbx.toml to match\n",
        "",
    )
    policy = sa.select(m.Tenant.consent_policy).where(m.Tenant.id == "acme")
    assert await scalar(sessions, policy) == "opt_in"
    status, shown, _ = await run("config", "show")
    assert status == 0
    assert parse(shown).directory().tenants["acme"].consent.policy is ConsentPolicy.OPT_IN
    # The rest of the tenant's rules are untouched.
    acme = parse(EXAMPLE).directory().tenants["acme"]
    assert parse(shown).directory().tenants["acme"].consent == ConsentRules(
        ConsentPolicy.OPT_IN, prompt_version="2026-03", prompt=acme.consent.prompt
    )
    assert await run("tenant", "set-consent", "acme", "opt_in") == (
        0,
        "acme: consent_policy is already opt_in (no change)\n",
        "",
    )
    # The file still says notify: applying it sets notify again.
    path = tmp_path / "pbx.toml"
    path.write_text(EXAMPLE)
    status, out, _ = await run("config", "apply", str(path))
    assert (status, out.splitlines()[0]) == (
        0,
        '~ tenant acme: consent_policy "opt_in" -> "notify"',
    )

    # Operator errors: one line, exit 2, nothing written.
    assert await run("tenant", "set-consent", "acme", "always") == (
        2,
        "",
        "pbxctl: error: POLICY: 'always' is not one of off, notify, opt_in\n",
    )
    assert await run("tenant", "set-consent", "nobody", "off") == (
        2,
        "",
        "pbxctl: error: TENANT: no tenant 'nobody' (or it is deactivated)\n",
    )
    await add_cdr(sessions, "beta", "beta-support", "celina")
    await apply(sessions, without_tenant_beta(EXAMPLE))  # beta is deactivated
    status, _, err = await run("tenant", "set-consent", "beta", "off")
    assert (status, err) == (2, "pbxctl: error: TENANT: no tenant 'beta' (or it is deactivated)\n")
    assert await scalar(sessions, policy) == "notify"
    beta = sa.select(m.Tenant.consent_policy).where(m.Tenant.id == "beta")
    assert await scalar(sessions, beta) == "opt_in"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_pbxctl_database_problems(
    pbxctl: Pbxctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = pbxctl
    path = tmp_path / "pbx.toml"
    path.write_text(EXAMPLE)
    # Unmigrated: a hint, not a traceback.
    status, _, err = await run("config", "show")
    assert status == 2
    assert "run `pbxctl db upgrade` first" in err
    status, _, err = await run("tenant", "set-consent", "acme", "off")
    assert status == 2
    assert "run `pbxctl db upgrade` first" in err
    # Unreachable: the message never shows the password.
    secret = "s3cr3t-pw-91"
    monkeypatch.setenv("PBX_DATABASE__URL", f"postgresql+asyncpg://pbx:{secret}@127.0.0.1:9/pbx")
    status, out, err = await run("config", "apply", str(path))
    assert (status, out) == (2, "")
    assert err.startswith("pbxctl: error: database postgresql+asyncpg://pbx:***@127.0.0.1:9/pbx")
    assert "unreachable" in err
    assert secret not in err
    assert len(err.splitlines()) == 1
