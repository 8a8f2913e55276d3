"""Reading Asterisk's cdr_csv Master.csv (lines as Asterisk 22 writes them)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pbx_controller.cli.cdr import parse_day
from pbx_controller.cli.main import CliError, main
from pbx_controller.store.reconcile import ReconcileInputError, read_master_csv, utc_day

# Two lines from a real sandbox run: the caller's ;1 half (no userfield) and
# the ;2 half that ran the dialplan, with our call id in the userfield.
REAL = (
    '"","","1001","pbx-inbound",""""" <>","Local/1001@pbx-inbound-00000000;1","","Wait","1",'
    '"2026-11-27 16:58:24","2026-11-27 16:58:24","2026-11-27 16:58:25",1,1,"ANSWERED",'
    '"DOCUMENTATION","run-hb_re0a2-1795798704.0",""\n'
    '"","","s","pbx-fallback",""""" <>","Local/1001@pbx-inbound-00000000;2","","Playback",'
    '"ss-noservice","2026-11-27 16:58:24","2026-11-27 16:58:24","2026-11-27 16:58:25",1,1,'
    '"ANSWERED","DOCUMENTATION","run-hb_re0a2-1795798704.1","1B1ED65C-dd7f-4cfa-8676-3c0b9d4b3b95"\n'
)


def test_reads_our_calls_and_skips_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "Master.csv"
    path.write_text(REAL + "\n")
    calls = read_master_csv(path)
    (call_id,) = calls
    assert call_id == "1b1ed65c-dd7f-4cfa-8676-3c0b9d4b3b95"  # normalised
    (row,) = calls[call_id]
    assert row.start == datetime(2026, 11, 27, 16, 58, 24, tzinfo=UTC)
    assert row.end == datetime(2026, 11, 27, 16, 58, 25, tzinfo=UTC)
    assert (row.dst, row.dcontext, row.lastapp) == ("s", "pbx-fallback", "Playback")
    assert row.channel.endswith(";2")
    assert row.line == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n", "3 columns"),
        (REAL.replace("2026-11-27 16:58:24", "27/11/2026", 1).split("\n")[1], None),
        (REAL.replace('"2026-11-27 16:58:24","2026-11-27 16:58:24","2026-11-27 16:58:25",1,1,'
                      '"ANSWERED"', '"yesterday","","",1,1,"ANSWERED"'), "is not 'YYYY-MM-DD"),
    ],
)  # fmt: skip
def test_refuses_what_is_not_a_master_csv(
    tmp_path: Path, content: str, message: str | None
) -> None:
    path = tmp_path / "Master.csv"
    path.write_text(content)
    if message is None:
        assert len(read_master_csv(path)) == 1
        return
    with pytest.raises(ReconcileInputError, match=message):
        read_master_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReconcileInputError, match="does not exist"):
        read_master_csv(tmp_path / "nope.csv")


def test_day_is_a_utc_day_and_strictly_iso() -> None:
    assert utc_day(date(2025, 3, 30)) == (
        datetime(2025, 3, 30, tzinfo=UTC),
        datetime(2025, 3, 31, tzinfo=UTC),
    )
    assert parse_day("2025-03-30") == date(2025, 3, 30)
    for bad in ("20250330", "2025-W13-7", "2025-02-30", "30.03.2025"):
        with pytest.raises(CliError):
            parse_day(bad)


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never reaches the database: the input is checked first.
    monkeypatch.setenv("PBX_DATABASE__URL", "postgresql://pbx:s3cret@127.0.0.1:1/pbx")
    not_csv = tmp_path / "x.csv"
    not_csv.write_text("a,b\n")
    for argv, message in (
        (["--date", "2025-02-30", "--csv", str(not_csv)], "--date: day is out of range"),
        (["--date", "2025-03-30", "--csv", str(tmp_path / "nope")], "does not exist"),
        (["--date", "2025-03-30", "--csv", str(not_csv)], "2 columns"),
    ):
        assert main(["cdr", "reconcile", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pbxctl: error: ")
        assert message in err
        assert len(err.splitlines()) == 1
        assert "s3cret" not in err
