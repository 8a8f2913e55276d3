"""Tenant consent and recording rules; opt_in is the default consent policy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The columns behind core.consent.ConsentRules (digits, answer timeout, prompt
and its version) and RecordingRules (extra formats, what a withdrawal does;
retention is 0001's column). Existing tenants get the old behaviour's
values from the server defaults. `consent_policy`'s server default becomes
'opt_in' for new rows; existing rows keep the policy they had.

Batch mode: SQLite can neither add a CHECK constraint nor change a default
in place, so the table is copied there (foreign keys are off while env.py
migrates); PostgreSQL gets plain ALTER TABLE statements.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGITS = "'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#'"

# name (after the "ck_tenant_" prefix) -> condition
CHECKS = {
    "consent_agree_digit": f"consent_agree_digit IN ({DIGITS})",
    "consent_opt_out_digit": f"consent_opt_out_digit IN ({DIGITS})",
    "consent_digits": "consent_agree_digit <> consent_opt_out_digit",
    "consent_timeout_ms": "consent_timeout_ms > 0",
    "recording_formats": "recording_formats IN ('', 'mp3', 'opus', 'mp3,opus')",
    "recording_withdrawal": "recording_withdrawal IN ('delete', 'keep_until_withdrawal')",
}


def upgrade() -> None:
    with op.batch_alter_table("tenant") as batch:
        batch.alter_column(
            "consent_policy",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            server_default=sa.text("'opt_in'"),
        )
        batch.add_column(
            sa.Column(
                "consent_agree_digit",
                sa.String(length=1),
                server_default=sa.text("'1'"),
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column(
                "consent_opt_out_digit",
                sa.String(length=1),
                server_default=sa.text("'9'"),
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column(
                "consent_timeout_ms", sa.Integer(), server_default=sa.text("5000"), nullable=False
            )
        )
        batch.add_column(
            sa.Column(
                "consent_prompt_version",
                sa.String(length=64),
                server_default=sa.text("'v1'"),
                nullable=False,
            )
        )
        batch.add_column(sa.Column("consent_prompt", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column(
                "recording_formats",
                sa.String(length=32),
                server_default=sa.text("''"),
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column(
                "recording_withdrawal",
                sa.String(length=32),
                server_default=sa.text("'delete'"),
                nullable=False,
            )
        )
        for name, condition in CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_tenant_{name}"), condition)


def downgrade() -> None:
    with op.batch_alter_table("tenant") as batch:
        for name in reversed(CHECKS):
            batch.drop_constraint(op.f(f"ck_tenant_{name}"), type_="check")
        for column in (
            "recording_withdrawal",
            "recording_formats",
            "consent_prompt",
            "consent_prompt_version",
            "consent_timeout_ms",
            "consent_opt_out_digit",
            "consent_agree_digit",
        ):
            batch.drop_column(column)
        batch.alter_column(
            "consent_policy",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            server_default=sa.text("'notify'"),
        )
