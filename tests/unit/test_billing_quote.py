"""`pbxctl billing quote`: examples a, b, c exactly, and clear file errors."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

import pbx_controller.cli
from pbx_controller.billing.quote import (
    Quote,
    QuoteInputError,
    invoice_document,
    quote_files,
    read_cdrs,
    read_readiness,
    render_json,
    render_table,
)
from pbx_controller.cli.main import main
from pbx_controller.core.contract import Direction
from pbx_controller.core.rating import (
    Invoice,
    InvoiceLine,
    LineCode,
    Period,
    RatedPeriod,
    Unit,
)

HERE = Path(__file__).resolve()
DATA = HERE.parents[1] / "data" / "billing"
EXAMPLES = ("a", "b", "c")


def shared_dir() -> Path:
    """shared/ sits beside the repository; CI may point elsewhere."""
    override = os.environ.get("PBX_SHARED_DIR")
    return Path(override) if override else HERE.parents[2].parent / "shared"


def example_period(directory: Path) -> Period:
    return Period.parse(json.loads((directory / "expected.json").read_text())["period"])


def readiness_file(directory: Path) -> Path | None:
    found = sorted(directory.glob("readiness*.csv"))
    return found[0] if found else None


def assert_example(directory: Path) -> None:
    result = quote_files(
        directory / "contract.toml",
        directory / "cdrs.csv",
        example_period(directory),
        readiness_file(directory),
    )
    expected = (directory / "expected.json").read_text(encoding="utf-8")
    # Same keys, same order, same number formatting: compare the text.
    assert render_json(result.invoice) == expected.rstrip("\n")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_copy(name: str) -> None:
    assert_example(DATA / name)


@pytest.mark.parametrize("name", EXAMPLES)
def test_shared_example(name: str) -> None:
    # The shared examples are the product's test vectors. CI always has
    # shared/ beside the clone, so there a missing copy is a failure; a
    # developer's clone elsewhere still checks the committed copies above.
    directory = shared_dir() / "billing-examples" / name
    if not directory.is_dir() and not os.environ.get("CI"):
        pytest.skip(f"{directory} is missing; set PBX_SHARED_DIR (under CI this fails)")
    assert directory.is_dir(), f"{directory} is missing; set PBX_SHARED_DIR"
    assert_example(directory)
    # The committed copy must not drift from the shared original.
    shared_files = sorted(p.name for p in directory.iterdir() if p.is_file())
    copied_files = sorted(p.name for p in (DATA / name).iterdir() if p.is_file())
    assert shared_files == copied_files
    for file_name in shared_files:
        assert (directory / file_name).read_bytes() == (DATA / name / file_name).read_bytes()


# -- the CLI -----------------------------------------------------------------


@pytest.fixture
def billing_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build pbxctl with the billing group alone, whatever else exists yet."""
    monkeypatch.setattr(pbx_controller.cli, "GROUP_MODULES", ("billing",))


def quote_argv(directory: Path, *extra: str) -> list[str]:
    return [
        "billing",
        "quote",
        "--contract",
        str(directory / "contract.toml"),
        "--cdrs",
        str(directory / "cdrs.csv"),
        "--period",
        "2026-10",
        *extra,
    ]


@pytest.mark.usefixtures("billing_only")
@pytest.mark.parametrize("name", EXAMPLES)
def test_cli_prints_expected_json(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(quote_argv(DATA / name)) == 0
    out = capsys.readouterr().out
    assert out == (DATA / name / "expected.json").read_text().rstrip("\n") + "\n"


@pytest.mark.usefixtures("billing_only")
def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(quote_argv(DATA / "b", "--format", "table")) == 0
    out = capsys.readouterr().out
    assert "Quote for smallco, period 2026-10" in out
    # 17/31 of a month is shown short, marked as rounded.
    assert "~0.5484" in out
    assert out.rstrip().splitlines()[-1].split() == ["gross", "209.84", "PLN"]


@pytest.mark.usefixtures("billing_only")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--period", "2026-13"], "--period: period month must be within 1-12"),
        (["--period", "October"], "--period: expected a period like 2026-10"),
        (["--cdrs", "/nonexistent/cdrs.csv"], "/nonexistent/cdrs.csv: cannot read"),
        (["--contract", "/nonexistent/c.toml"], "/nonexistent/c.toml: cannot read"),
    ],
)
def test_cli_operator_errors_exit_2(
    change: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse keeps the last value of a repeated option.
    assert main(quote_argv(DATA / "a", *change)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pbxctl: error: {message}")


@pytest.mark.usefixtures("billing_only")
def test_cli_contract_error_names_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = (DATA / "a" / "contract.toml").read_text().replace('"30/6"', '"30-6"')
    (tmp_path / "contract.toml").write_text(contract)
    (tmp_path / "cdrs.csv").write_bytes((DATA / "a" / "cdrs.csv").read_bytes())
    assert main(quote_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pbxctl: error: {tmp_path / 'contract.toml'}: rates.inbound.increment:")


@pytest.mark.usefixtures("billing_only")
def test_cli_readiness_needs_a_readiness_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readiness = tmp_path / "r.csv"
    readiness.write_text("agent,started_at,ended_at,share\n")
    assert main(quote_argv(DATA / "a", "--readiness", str(readiness))) == 2
    assert "no [readiness] price" in capsys.readouterr().err


# -- reading CDRS.csv -----------------------------------------------------------

HEADER = "call_id,direction,arrived_at,answered_at,ended_at\n"
GOOD = "x1,inbound,2026-10-05T10:00:00+02:00,2026-10-05T10:00:05+02:00,2026-10-05T10:01:00+02:00\n"


def write(tmp_path: Path, text: str, name: str = "cdrs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cdr_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(QuoteInputError) as info:
        read_cdrs(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    return message[len(str(path)) :]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        (
            "x2,inbound,yesterday,,2026-10-05T10:01:00+02:00",
            ":3: column 3 (arrived_at): not an ISO 8601 timestamp: 'yesterday'",
        ),
        (
            "x2,inbound,2026-10-05T10:00:00,,2026-10-05T10:01:00+02:00",
            ":3: column 3 (arrived_at): timestamp '2026-10-05T10:00:00' has no UTC offset",
        ),
        (
            "x2,sideways,2026-10-05T10:00:00+02:00,,2026-10-05T10:01:00+02:00",
            ":3: column 2 (direction): expected inbound or outbound, got 'sideways'",
        ),
        (
            "x2,inbound,2026-10-05T10:00:10+02:00,2026-10-05T10:00:00+02:00,"
            "2026-10-05T10:01:00+02:00",
            ":3: column 4 (answered_at): is before arrived_at",
        ),
        (
            "x2,inbound,2026-10-05T10:00:00+02:00,2026-10-05T10:00:10+02:00,"
            "2026-10-05T10:00:05+02:00",
            ":3: column 5 (ended_at): is before answered_at",
        ),
        (
            "x2,inbound,2026-10-05T10:00:00+02:00,,",
            ":3: column 5 (ended_at): is empty",
        ),
        (
            ",inbound,2026-10-05T10:00:00+02:00,,2026-10-05T10:01:00+02:00",
            ":3: column 1 (call_id): is empty",
        ),
        (
            "x1,inbound,2026-10-05T10:00:00+02:00,,2026-10-05T10:01:00+02:00",
            ":3: column 1 (call_id): call 'x1' repeats line 2",
        ),
        ("x2,inbound,2026-10-05T10:00:00+02:00", ":3: expected 5 fields, got 3"),
    ],
)
def test_bad_cdr_row_names_line_and_column(tmp_path: Path, row: str, where: str) -> None:
    assert cdr_error(tmp_path, HEADER + GOOD + row + "\n").startswith(where)


@pytest.mark.parametrize(
    ("header", "where"),
    [
        ("", ":1: empty file, expected the header call_id,direction"),
        (
            "call_id,direction,arrived_at,answered_at,ended_at,queue\n",
            ":1: column 6: unknown column 'queue'",
        ),
        (
            "call_id,direction,arrived_at,answered_at,answered_at,ended_at\n",
            ":1: column 5: repeated column 'answered_at'",
        ),
        ("call_id,direction,arrived_at,ended_at\n", ":1: missing column 'answered_at'"),
    ],
)
def test_bad_cdr_header(tmp_path: Path, header: str, where: str) -> None:
    assert cdr_error(tmp_path, header).startswith(where)


def test_cdr_reading_accepts_bom_blank_lines_column_order_and_fractions(tmp_path: Path) -> None:
    text = (
        "\ufeffcall_id,arrived_at,answered_at,ended_at,direction\n"
        "\n"
        "x1,2026-10-05T10:00:00+02:00,2026-10-05T10:00:00.6+02:00,2026-10-05T08:00:02Z,outbound\n"
        "x2,2026-10-05T10:00:00.123456789+02:00,,2026-10-05T10:00:09+02:00,inbound\n"
    )
    rows = read_cdrs(write(tmp_path, text))
    assert [row.line for row in rows] == [3, 4]
    first, second = (row.call for row in rows)
    assert first.direction is Direction.OUTBOUND
    assert first.answered_at is not None
    assert first.answered_at.microsecond == 600_000
    assert second.answered_at is None


def test_quoted_field_spanning_lines_reports_the_starting_line(tmp_path: Path) -> None:
    text = HEADER + '"x\n1",inbound,bad,,2026-10-05T10:01:00+02:00\n'
    assert cdr_error(tmp_path, text).startswith(":2: column 3 (arrived_at)")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cdrs.csv"
    path.write_bytes(HEADER.encode() + b"\xff\xfe,inbound\n")
    with pytest.raises(QuoteInputError, match="not UTF-8"):
        read_cdrs(path)


def test_answered_call_without_a_rate_for_its_direction(tmp_path: Path) -> None:
    contract = (DATA / "a" / "contract.toml").read_text()
    contract = contract[: contract.index("[rates.outbound]")]
    write(tmp_path, contract, "contract.toml")
    cdrs = write(tmp_path, (DATA / "a" / "cdrs.csv").read_text())
    with pytest.raises(QuoteInputError, match=r"cdrs\.csv:6: call a5: .* no rates\.outbound"):
        quote_files(tmp_path / "contract.toml", cdrs, Period(2026, 10))


def test_quote_leaves_out_other_periods_and_counts_them(tmp_path: Path) -> None:
    # Example a's five calls, plus one in November and one on Sep 30.
    # October's invoice is unchanged; the table notes what was left out.
    extra = (
        "n1,inbound,2026-11-02T10:00:00+01:00,2026-11-02T10:00:01+01:00,"
        "2026-11-02T10:09:00+01:00\n"
        "s1,outbound,2026-09-30T23:59:00+02:00,2026-09-30T23:59:30+02:00,"
        "2026-10-01T00:05:00+02:00\n"
    )
    cdrs = write(tmp_path, (DATA / "a" / "cdrs.csv").read_text() + extra)
    result = quote_files(DATA / "a" / "contract.toml", cdrs, Period(2026, 10))
    assert render_json(result.invoice) == (DATA / "a" / "expected.json").read_text().rstrip("\n")
    assert (result.other_periods, result.unanswered) == (2, 1)
    table = render_table(result)
    assert "note: 1 call never answered, not billed" in table
    assert "note: 2 calls billed in another period, left out" in table


# -- reading R.csv and pricing readiness -------------------------------------

READINESS_CONTRACT = """
tenant = "ready"
currency = "PLN"
timezone = "Europe/Warsaw"
start = 2026-10-01
trial_days = 14
vat_percent = "23"

[rates.inbound]
per_minute = "0.50"
increment = "1/1"
basis = "talk"

[readiness]
per_hour = "14.50"
"""


def test_quote_with_readiness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contract = write(tmp_path, READINESS_CONTRACT, "contract.toml")
    cdrs = write(tmp_path, HEADER)
    readiness = write(
        tmp_path,
        "agent,started_at,ended_at,share\n"
        # Trial ends with Oct 14 (local): of 20:00..02:00 only 2 h count, alone.
        "ann,2026-10-14T20:00:00+02:00,2026-10-15T02:00:00+02:00,1\n"
        # 3 h shared with two other tenants: 1 h.
        "bob,2026-10-20T08:00:00+02:00,2026-10-20T11:00:00+02:00,1/3\n"
        # 1 h shared with one other tenant: 0.5 h.
        "bob,2026-10-21T08:00:00+02:00,2026-10-21T09:00:00+02:00,0.5\n",
        "r.csv",
    )
    # 2 + 1 + 0.5 = 3.5 h x 14.50 = 50.75; VAT 11.6725 -> 11.67; gross 62.42.
    result = quote_files(contract, cdrs, Period(2026, 10), readiness)
    assert invoice_document(result.invoice) == {
        "tenant": "ready",
        "period": "2026-10",
        "currency": "PLN",
        "lines": [
            {
                "code": "readiness",
                "quantity": "3.5",
                "unit": "h",
                "unit_price": "14.50",
                "amount": "50.75",
            }
        ],
        "net": "50.75",
        "vat": "11.67",
        "gross": "62.42",
    }


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,0", ":2: column 4 (share)"),
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,3/2", ":2: column 4 (share)"),
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,1/0", ":2: column 4 (share)"),
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,-1", ":2: column 4 (share)"),
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,1e-1", ":2: column 4 (share)"),
        ("ann,2026-10-05T08:00:00+02:00,2026-10-05T07:00:00+02:00,1", ":2: column 3 (ended_at)"),
        ("ann,2026-10-05T08:00:00,2026-10-05T09:00:00+02:00,1", ":2: column 2 (started_at)"),
        (",2026-10-05T08:00:00+02:00,2026-10-05T09:00:00+02:00,1", ":2: column 1 (agent)"),
    ],
)
def test_bad_readiness_row(tmp_path: Path, row: str, where: str) -> None:
    path = write(tmp_path, f"agent,started_at,ended_at,share\n{row}\n", "r.csv")
    with pytest.raises(QuoteInputError) as info:
        read_readiness(path)
    assert str(info.value).startswith(f"{path}{where}")


# -- rendering ----------------------------------------------------------------


def line(
    code: LineCode, quantity: Fraction, unit: Unit, price: str, call_id: str | None = None
) -> InvoiceLine:
    return InvoiceLine.priced(code, quantity, unit, Decimal(price), call_id)


def invoice_of(*lines: InvoiceLine, net: str = "0.00", vat: str = "0.00") -> Invoice:
    gross = Decimal(net) + Decimal(vat)
    return Invoice(
        "t", Period(2026, 11), "PLN", lines, Decimal(23), Decimal(net), Decimal(vat), gross
    )


def render_table_for(invoice: Invoice) -> str:
    return render_table(Quote(RatedPeriod(invoice, ()), other_periods=0, unanswered=0))


def test_tiny_quantities_are_written_without_exponent() -> None:
    # 1 ms at share 1/3 is 1/10,800,000 h = 0.0000000925925925... h; 28
    # significant digits are 9259259259259259259259259259 (the next digit, 2,
    # rounds down). str() of that Decimal would say 9.25...E-8.
    tiny = line(LineCode.READINESS, Fraction(1, 10_800_000), Unit.HOUR, "14.50")
    assert invoice_document(invoice_of(tiny))["lines"] == [
        {
            "code": "readiness",
            "quantity": "0.0000000" + "9259259259259259259259259259",
            "unit": "h",
            "unit_price": "14.50",
            "amount": "0.00",
        }
    ]


def test_adjustment_lines_name_the_call_after_the_amount() -> None:
    adjustment = line(LineCode.ADJUSTMENTS, Fraction(2), Unit.MINUTE, "0.50", "call-7")
    document = json.loads(render_json(invoice_of(adjustment, net="1.00", vat="0.23")))
    assert list(document["lines"][0].items()) == [
        ("code", "adjustments"),
        ("quantity", "2"),
        ("unit", "min"),
        ("unit_price", "0.50"),
        ("amount", "1.00"),
        ("call_id", "call-7"),
    ]
    assert document["gross"] == "1.23"
    assert "adjustments call-7" in render_table_for(invoice_of(adjustment))


def test_empty_invoice_renders() -> None:
    invoice = invoice_of()
    assert json.loads(render_json(invoice))["lines"] == []
    assert "(nothing to bill)" in render_table_for(invoice)
