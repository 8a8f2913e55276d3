"""Migrations build exactly the schema the models describe, on both dialects.

Every test runs on an empty SQLite file and on an empty PostgreSQL database
(`database_url`); the PostgreSQL variant carries the `postgres` marker.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pbx_controller.store import (
    Base,
    alembic_config,
    current_revision,
    downgrade_to,
    make_engine,
    upgrade_to_head,
)
from pbx_controller.store.db import MIGRATIONS_DIR

REPO_ROOT = MIGRATIONS_DIR.parent
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()

# The same comparison `alembic check` makes (see migrations/env.py).
COMPARE_OPTS = {"compare_type": True, "compare_server_default": True}


async def run_sync_on(url: str, fn: Callable[[sa.Connection], Any]) -> Any:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


async def schema_diff(url: str, metadata: sa.MetaData) -> list[Any]:
    def diff(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts=COMPARE_OPTS)
        return list(compare_metadata(context, metadata))

    result: list[Any] = await run_sync_on(url, diff)
    return result


def leftover_objects(connection: sa.Connection) -> list[str]:
    """Every schema object except Alembic's own version table."""
    if connection.dialect.name == "sqlite":
        sql = (
            "SELECT type || ' ' || name FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' AND tbl_name <> 'alembic_version'"
        )
    else:
        # Relations (tables, indexes, sequences, views) and standalone types.
        sql = (
            "SELECT c.relkind::text || ' ' || c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'"
            " AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')"
            " UNION ALL SELECT 'type ' || t.typname FROM pg_type t"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')"
        )
    return sorted(row[0] for row in connection.exec_driver_sql(sql))


def reflected_names(connection: sa.Connection) -> set[tuple[str, str, str]]:
    inspector = sa.inspect(connection)
    names: set[tuple[str, str, str]] = set()
    for table in Base.metadata.tables:
        names.add((table, "pk", str(inspector.get_pk_constraint(table)["name"])))
        names |= {(table, "fk", str(fk["name"])) for fk in inspector.get_foreign_keys(table)}
        names |= {(table, "uq", str(uq["name"])) for uq in inspector.get_unique_constraints(table)}
        names |= {(table, "ck", str(ck["name"])) for ck in inspector.get_check_constraints(table)}
        names |= {
            (table, "ix", str(ix["name"]))
            for ix in inspector.get_indexes(table)
            # PostgreSQL lists a unique constraint's index as an index too.
            if not ix.get("duplicates_constraint")
        }
    return names


def model_names() -> set[tuple[str, str, str]]:
    kinds = {
        sa.PrimaryKeyConstraint: "pk",
        sa.ForeignKeyConstraint: "fk",
        sa.UniqueConstraint: "uq",
        sa.CheckConstraint: "ck",
    }
    names: set[tuple[str, str, str]] = set()
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            names.add((table.name, kinds[type(constraint)], str(constraint.name)))
        names |= {(table.name, "ix", str(index.name)) for index in table.indexes}
    return names


async def test_upgrade_head_builds_what_the_models_define(database_url: str) -> None:
    await upgrade_to_head(database_url)
    assert await current_revision(database_url) == HEAD
    assert await schema_diff(database_url, Base.metadata) == []
    # A second upgrade on an up-to-date database is a no-op, as at every start-up.
    await upgrade_to_head(database_url)
    assert await current_revision(database_url) == HEAD


async def test_schema_diff_detects_drift(database_url: str) -> None:
    """Proves the comparison above can fail: a model change the migration lacks."""
    await upgrade_to_head(database_url)
    drifted = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    cdr = drifted.tables["cdr"]
    cdr.append_column(sa.Column("surprise", sa.Integer(), nullable=True))
    sa.Index(None, cdr.c.caller)
    drifted.tables["agent"].c.name.type = sa.String(length=10)

    diffs = await schema_diff(database_url, drifted)

    kinds = sorted(d[0] if isinstance(d, tuple) else d[0][0] for d in diffs)
    assert kinds == ["add_column", "add_index", "modify_type"], diffs
    assert any(d[0] == "add_column" and d[3].name == "surprise" for d in diffs)


async def test_constraint_and_index_names_follow_the_convention(database_url: str) -> None:
    # compare_metadata ignores CHECK constraints and most names; check them here.
    await upgrade_to_head(database_url)
    reflected = await run_sync_on(database_url, reflected_names)
    assert reflected == model_names()
    assert all(name.startswith(("pk_", "fk_", "uq_", "ck_", "ix_")) for _, _, name in reflected)


async def test_downgrade_to_base_drops_everything_and_upgrade_round_trips(
    database_url: str,
) -> None:
    await upgrade_to_head(database_url)
    assert await run_sync_on(database_url, leftover_objects) != []

    await downgrade_to(database_url, "base")

    assert await run_sync_on(database_url, leftover_objects) == []
    assert await current_revision(database_url) is None

    await upgrade_to_head(database_url)
    assert await current_revision(database_url) == HEAD
    assert await schema_diff(database_url, Base.metadata) == []


async def alembic_cli(*args: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    output = out.decode()
    assert process.returncode == 0, f"alembic {' '.join(args)} failed:\n{output}"
    return output


async def test_cli_upgrade_check_and_downgrade(database_url: str) -> None:
    """The alembic.ini + env.py path (asyncio.run in env.py), as ops run it."""
    url_arg = f"url={database_url}"
    await alembic_cli("-x", url_arg, "upgrade", "head")
    assert await current_revision(database_url) == HEAD
    # `alembic check` autogenerates against the database and fails on any diff.
    assert "No new upgrade operations detected" in await alembic_cli("-x", url_arg, "check")
    await alembic_cli("-x", url_arg, "downgrade", "base")
    assert await current_revision(database_url) is None
    # Without -x, PBX_DATABASE_URL picks the database.
    await alembic_cli("upgrade", "head", env={"PBX_DATABASE_URL": database_url})
    assert await current_revision(database_url) == HEAD


async def test_a_failing_migration_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    """SQLite DDL is made transactional by env.py: a failure rolls back whole."""
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(MIGRATIONS_DIR / "env.py", scripts / "env.py")
    shutil.copy(MIGRATIONS_DIR / "script.py.mako", scripts / "script.py.mako")
    (scripts / "versions" / "0001_broken.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        "revision = '0001'\n"
        "down_revision = None\n"
        "def upgrade():\n"
        "    op.create_table('half_done', sa.Column('id', sa.Integer(), primary_key=True))\n"
        "    op.execute('CREATE INDEX ix_half_done ON half_done (id)')\n"
        "    op.execute('SELECT * FROM no_such_table')\n"
        "def downgrade():\n"
        "    pass\n"
    )

    def upgrade(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(scripts))
        config.set_main_option("path_separator", "os")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    with pytest.raises(sa.exc.DBAPIError, match=r"no_such_table|does not exist"):
        await run_sync_on(database_url, upgrade)

    assert await run_sync_on(database_url, leftover_objects) == []
    assert await current_revision(database_url) is None


def test_migration_history_is_one_linear_chain() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1
    revisions = list(scripts.walk_revisions())
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision
    for revision in revisions:
        assert callable(getattr(revision.module, "downgrade", None)), revision.revision


async def execute(url: str, *statements: str) -> list[Any]:
    """Run raw SQL in one committed transaction; the last statement's rows."""
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for sql in statements:
                result = await connection.exec_driver_sql(sql)
                rows = list(result) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def test_0002_keeps_each_tenants_policy_and_new_tenants_opt_in(database_url: str) -> None:
    """Tenants written under 0001 keep their consent policy (the old default,
    notify) and get the old behaviour's rules; only new rows default to
    opt_in. Their DIDs still point at them (SQLite copies the table)."""
    await upgrade_to_head(database_url)
    await downgrade_to(database_url, "0001")
    await execute(
        database_url,
        "INSERT INTO tenant (id, name) VALUES ('old', 'Old')",
        "INSERT INTO tenant (id, name, consent_policy) VALUES ('off', 'Off', 'off')",
        "INSERT INTO did (number, tenant_id) VALUES ('48221001', 'old')",
    )

    await upgrade_to_head(database_url)

    columns = (
        "id, consent_policy, consent_agree_digit, consent_opt_out_digit, consent_timeout_ms,"
        " consent_prompt_version, consent_prompt, recording_formats, recording_withdrawal,"
        " recording_retention_days"
    )
    select = f"SELECT {columns} FROM tenant ORDER BY id"
    rows = await execute(
        database_url, "INSERT INTO tenant (id, name) VALUES ('new', 'New')", select
    )
    assert [tuple(r) for r in rows] == [
        ("new", "opt_in", "1", "9", 5000, "v1", None, "", "delete", 90),
        ("off", "off", "1", "9", 5000, "v1", None, "", "delete", 90),
        ("old", "notify", "1", "9", 5000, "v1", None, "", "delete", 90),
    ]
    assert await execute(database_url, "SELECT tenant_id FROM did") == [("old",)]
    for bad in (
        "consent_agree_digit = 'x'",
        "consent_opt_out_digit = '1'",  # the agree digit
        "consent_timeout_ms = 0",
        "recording_formats = 'opus,mp3'",  # not the canonical order
        "recording_withdrawal = 'keep'",
    ):
        with pytest.raises(sa.exc.IntegrityError):
            await execute(database_url, f"UPDATE tenant SET {bad} WHERE id = 'new'")
    with pytest.raises(sa.exc.IntegrityError):  # the foreign key survived the copy
        await execute(database_url, "INSERT INTO did (number, tenant_id) VALUES ('1', 'nobody')")

    await downgrade_to(database_url, "0001")
    rows = await execute(
        database_url,
        "INSERT INTO tenant (id, name) VALUES ('newer', 'Newer')",
        "SELECT id, consent_policy FROM tenant ORDER BY id",
    )
    assert [tuple(r) for r in rows] == [
        ("new", "opt_in"),
        ("newer", "notify"),
        ("off", "off"),
        ("old", "notify"),
    ]
    assert await execute(database_url, "SELECT tenant_id FROM did") == [("old",)]
