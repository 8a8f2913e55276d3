"""pbx.toml: every invalid file is refused with the offending key's path, every
valid one survives parse -> render -> parse unchanged, and the diff names
exactly what differs."""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_controller import configfile
from pbx_controller.configfile import (
    Change,
    ConfigFileError,
    DidConfig,
    PbxConfig,
    TenantConfig,
    diff,
    parse,
    render,
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

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pbx.toml"

# The smallest file with one of everything the checks below bend.
BASE = """
[tenants.acme]
name = "Acme"
[tenants.acme.hours]
mon-fri = "08:00-18:00"
[[tenants.acme.dids]]
number = "48221001"
queue = "acme-sales"

[tenants.beta]
name = "Beta"
dids = ["48222001"]

[queues.acme-sales]
tenant = "acme"
ring_timeout_s = 15
[[queues.acme-sales.skills]]
skill = "polish"
min_level = 5
relax = [{after_s = 30, min_level = 3}, {after_s = 60, optional = true}]

[queues.beta-support]
tenant = "beta"

[agents.anna]
name = "Anna Nowak"
endpoint = "PJSIP/agent-anna"
skills = {polish = 8}
queues = ["acme-sales", {queue = "beta-support", penalty = 1}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


def test_base_and_example_parse() -> None:
    config = parse(BASE)
    assert [t.id for t in config.tenants] == ["acme", "beta"]
    (sales, _support) = config.queues
    assert sales.skills == (
        SkillRequirement(
            "polish", 5, (Relaxation(30_000, min_level=3), Relaxation(60_000, optional=True))
        ),
    )
    assert sales.ring_timeout_ms == 15_000
    anna = config.agents[0]
    assert dict(anna.skills) == {"polish": 8}
    assert anna.memberships == (
        QueueMembership("acme-sales"),
        QueueMembership("beta-support", penalty=1),
    )
    directory = config.directory()
    assert directory.queue_for_did("48221001") == sales
    assert directory.queue_for_did("48222001") is None

    example = configfile.load(EXAMPLE)
    assert (len(example.tenants), len(example.queues), len(example.agents)) == (2, 3, 4)
    assert all(q.skills and any(s.relaxations for s in q.skills) for q in example.queues)


def test_units_and_defaults() -> None:
    config = parse(BASE.replace("ring_timeout_s = 15", "ring_timeout_s = 1.5\nwrapup_s = 0"))
    sales, support = config.queues
    assert (sales.ring_timeout_ms, sales.wrapup_ms) == (1_500, 0)
    # Defaults are the model's, except max_wait (the database needs a limit).
    assert support == Queue("beta-support", "beta", name="beta-support", max_wait_ms=300_000)
    acme = config.tenants[0]
    # A tenant that says nothing about consent asks for it (GDPR-safe).
    assert acme.tenant.consent == ConsentRules(ConsentPolicy.OPT_IN)
    assert acme.tenant.recording == RecordingRules((), WithdrawalPolicy.DELETE, 90)
    assert acme.consent_policy is ConsentPolicy.OPT_IN  # shorthands for the tenant's rules
    assert acme.recording_retention_days == 90
    assert acme.tenant.greeting == ("sound:hello-world",)
    assert acme.tenant.business_hours == BusinessHours(
        tuple(OpenWindow(d, time(8), time(18)) for d in range(5))
    )


def test_hours_grammar() -> None:
    hours = """
[tenants.acme.hours]
"mon,wed" = ["08:00-12:00", "13:00-17:00"]
thu = "22:00-06:00"
sat-sun = "00:00-24:00"
holidays = [2026-12-25, "2026-12-26"]
"""
    text = BASE.replace('[tenants.acme.hours]\nmon-fri = "08:00-18:00"', hours)
    bh = parse(text).tenants[0].tenant.business_hours
    assert bh is not None
    assert bh.windows == (
        OpenWindow(0, time(8), time(12)),
        OpenWindow(0, time(13), time(17)),
        OpenWindow(2, time(8), time(12)),
        OpenWindow(2, time(13), time(17)),
        OpenWindow(3, time(22), time(6)),
        OpenWindow(5, time(0), time(0)),
        OpenWindow(6, time(0), time(0)),
    )
    assert bh.holidays == {date(2026, 12, 25), date(2026, 12, 26)}


CONSENT = """consent_policy = "notify"
consent_agree_digit = "*"
consent_opt_out_digit = "#"
consent_timeout_s = 2.5
consent_prompt_version = "2026-03"
consent_prompt = ["sound:conf-now-recording", "digits:#"]
recording_formats = ["opus", "mp3"]
recording_withdrawal = "keep_until_withdrawal"
recording_retention_days = 30
"""


def test_consent_and_recording_rules_reach_the_core_tenant() -> None:
    config = parse(BASE.replace('name = "Beta"\n', 'name = "Beta"\n' + CONSENT, 1))
    beta = config.directory().tenants["beta"]
    assert beta.consent == ConsentRules(
        ConsentPolicy.NOTIFY,
        agree_digit="*",
        opt_out_digit="#",
        prompt_version="2026-03",
        answer_timeout_ms=2_500,
        prompt=("sound:conf-now-recording", "digits:#"),
    )
    # Formats in canonical order, whatever the file's.
    assert beta.recording == RecordingRules(
        ("mp3", "opus"), WithdrawalPolicy.KEEP_UNTIL_WITHDRAWAL, 30
    )
    assert config.tenants[1].consent_policy is ConsentPolicy.NOTIFY
    assert config.tenants[1].recording_retention_days == 30
    # One prompt may be a plain string, like the greeting.
    single = parse(BASE.replace('name = "Beta"\n', 'name = "Beta"\nconsent_prompt = "sound:x"\n'))
    assert single.tenants[1].tenant.consent.prompt == ("sound:x",)


def test_consent_and_recording_rules_render_and_diff() -> None:
    config = parse(BASE.replace('name = "Beta"\n', 'name = "Beta"\n' + CONSENT, 1))
    text = render(config)
    assert parse(text) == config
    assert render(parse(text)) == text
    # Every setting explicit, except the stock prompt (absent, not []).
    acme = text[text.index("[tenants.acme]") : text.index("[tenants.acme.hours]")]
    assert acme.splitlines()[4:] == [
        'consent_policy = "opt_in"',
        'consent_agree_digit = "1"',
        'consent_opt_out_digit = "9"',
        "consent_timeout_s = 5",
        'consent_prompt_version = "v1"',
        "recording_formats = []",
        'recording_withdrawal = "delete"',
        "recording_retention_days = 90",
        "",
    ]
    assert 'consent_prompt = ["sound:conf-now-recording", "digits:#"]\n' in text
    assert 'recording_formats = ["mp3", "opus"]\n' in text
    assert "consent_timeout_s = 2.5\n" in text

    changed = parse(
        BASE.replace(
            'name = "Beta"\n',
            'name = "Beta"\n' + CONSENT.replace('"notify"', '"off"').replace(', "mp3"', ""),
            1,
        ).replace('name = "Acme"\n', 'name = "Acme"\nconsent_prompt = ["sound:beep"]\n', 1)
    )
    assert [str(c) for c in diff(config, changed)] == [
        '~ tenant acme: +consent_prompt ["sound:beep"]',
        '~ tenant beta: consent_policy "notify" -> "off"',
        '~ tenant beta: recording_formats ["mp3", "opus"] -> ["opus"]',
    ]


def consent_param(line: str, expected: str, id: str) -> object:
    """A consent or recording key set to `line` in tenant acme."""
    return pytest.param('name = "Acme"', f'name = "Acme"\n{line}', expected, id=id)


# (what to replace in BASE, with what, the problem expected: "path: message" regex)
BAD = [
    consent_param(
        'consent_agree_digit = "11"',
        r"^tenants\.acme\.consent_agree_digit: '11' is not one DTMF digit \(0-9, \* or #\)$",
        "agree-digit-long",
    ),
    consent_param(
        'consent_agree_digit = "a"',
        r"^tenants\.acme\.consent_agree_digit: 'a' is not one DTMF digit \(0-9, \* or #\)$",
        "agree-digit-letter",
    ),
    consent_param(
        "consent_opt_out_digit = 9",
        r'^tenants\.acme\.consent_opt_out_digit: must be a string \(quote it: "9"\)$',
        "opt-out-digit-integer",
    ),
    consent_param(
        'consent_opt_out_digit = "1"',
        r"^tenants\.acme\.consent_opt_out_digit: '1' is also consent_agree_digit: "
        r"the two must differ$",
        "digits-equal",
    ),
    consent_param(
        'consent_agree_digit = "9"',
        r"^tenants\.acme\.consent_agree_digit: '9' is also consent_opt_out_digit: "
        r"the two must differ$",
        "digits-equal-default",
    ),
    consent_param(
        "consent_timeout_s = 0",
        r"^tenants\.acme\.consent_timeout_s: must be greater than 0 seconds, got 0$",
        "consent-timeout",
    ),
    consent_param(
        "consent_timeout_ms = 5000",
        r"^tenants\.acme\.consent_timeout_ms: unknown key; did you mean 'consent_timeout_s'\?$",
        "consent-timeout-ms",
    ),
    consent_param(
        'consent_prompt_version = ""',
        r"^tenants\.acme\.consent_prompt_version: must not be empty$",
        "prompt-version",
    ),
    consent_param(
        "consent_prompt = []",
        r"^tenants\.acme\.consent_prompt: needs at least one sound, or omit it",
        "prompt-empty",
    ),
    consent_param(
        'consent_prompt = ["sound:a", "press-one"]',
        r"^tenants\.acme\.consent_prompt\[1\]: 'press-one' is not a media URI",
        "prompt-uri",
    ),
    consent_param(
        'recording_formats = ["wav"]',
        r"^tenants\.acme\.recording_formats\[0\]: 'wav' is not mp3 or opus "
        r"\(the WAV is always kept\)$",
        "format",
    ),
    consent_param(
        'recording_formats = ["mp3", "mp3"]',
        r"^tenants\.acme\.recording_formats\[1\]: 'mp3' is also "
        r"tenants\.acme\.recording_formats\[0\]$",
        "format-twice",
    ),
    consent_param(
        'recording_formats = "mp3"',
        r"^tenants\.acme\.recording_formats: expected an array, got a string$",
        "formats-string",
    ),
    consent_param(
        'recording_withdrawal = "keep"',
        r"^tenants\.acme\.recording_withdrawal: must be one of delete, keep_until_withdrawal$",
        "withdrawal",
    ),
    pytest.param(
        "[tenants.acme]", "colour = 1\n[tenants.acme]", r"^colour: unknown key$", id="top"
    ),
    pytest.param(
        "ring_timeout_s = 15",
        "ring_timout_s = 15",
        r"^queues\.acme-sales\.ring_timout_s: unknown key; did you mean 'ring_timeout_s'\?$",
        id="typo",
    ),
    pytest.param(
        "ring_timeout_s = 15",
        'ring_timeout_s = "15"',
        r"^queues\.acme-sales\.ring_timeout_s: expected seconds \(a number\), got a string$",
        id="type",
    ),
    pytest.param(
        "ring_timeout_s = 15",
        "ring_timeout_s = 0",
        r"^queues\.acme-sales\.ring_timeout_s: must be greater than 0 seconds",
        id="zero-timeout",
    ),
    pytest.param(
        "ring_timeout_s = 15",
        "wrapup_s = 1.0005",
        r"^queues\.acme-sales\.wrapup_s: 1\.0005 is not a whole number of milliseconds$",
        id="sub-ms",
    ),
    pytest.param(
        "ring_timeout_s = 15",
        "max_callers = true",
        r"^queues\.acme-sales\.max_callers: expected an integer, got a boolean$",
        id="bool-as-int",
    ),
    pytest.param(
        "min_level = 5",
        "min_level = 11",
        r"^queues\.acme-sales\.skills\[0\]\.min_level: must be at most 10, got 11$",
        id="skill-level",
    ),
    pytest.param(
        "{after_s = 30, min_level = 3}",
        "{after_s = 30, min_level = 6}",
        r"^queues\.acme-sales\.skills\[0\]\.relax\[0\]\.min_level: must be lower than 5",
        id="relax-tightens",
    ),
    pytest.param(
        "{after_s = 60, optional = true}",
        "{after_s = 30, optional = true}",
        r"^queues\.acme-sales\.skills\[0\]\.relax\[1\]\.after_s: must be later",
        id="relax-order",
    ),
    pytest.param(
        "{after_s = 60, optional = true}",
        "{after_s = 60, optional = true, min_level = 1}",
        r"^queues\.acme-sales\.skills\[0\]\.relax\[1\]: set either min_level or optional",
        id="relax-both",
    ),
    pytest.param(
        'skill = "polish"',
        'skill = "Polish!"',
        r"^queues\.acme-sales\.skills\[0\]\.skill: 'Polish!' is not a skill name$",
        id="skill-name",
    ),
    pytest.param(
        "ring_timeout_s = 15",
        'strategy = "fastest"',
        r"^queues\.acme-sales\.strategy: must be one of longest_idle, ",
        id="strategy",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-fri = "8-18"',
        r"^tenants\.acme\.hours\.mon-fri: '8-18' is not a time range like '08:00-18:00'$",
        id="range-syntax",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-fri = "08:00-24:30"',
        r"^tenants\.acme\.hours\.mon-fri: '08:00-24:30' is not a time range",
        id="range-past-24",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-fri = "08:00-08:00"',
        r"^tenants\.acme\.hours\.mon-fri: '08:00-08:00' is empty; write '00:00-24:00'",
        id="range-empty",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-frii = "08:00-18:00"',
        r"^tenants\.acme\.hours\.mon-frii: is not a day or day range",
        id="day-name",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'fri-mon = "08:00-18:00"',
        r"^tenants\.acme\.hours\.fri-mon: is not a day or day range",
        id="day-range-backwards",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-fri = "08:00-18:00"\nwed = "17:00-19:00"',
        r"^tenants\.acme\.hours\.wed: overlaps tenants\.acme\.hours\.mon-fri on wed$",
        id="overlap",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'sun = "22:00-09:00"\nmon = "08:00-12:00"',
        r"^tenants\.acme\.hours\.mon: overlaps tenants\.acme\.hours\.sun on mon$",
        id="overlap-past-midnight-sunday",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        'mon-fri = "08:00-18:00"\nholidays = ["25.12.2026"]',
        r"^tenants\.acme\.hours\.holidays\[0\]: expected a date like 2026-12-25$",
        id="holiday",
    ),
    pytest.param(
        'mon-fri = "08:00-18:00"',
        "holidays = [2026-12-25]",
        r"^tenants\.acme\.hours: needs at least one day",
        id="hours-without-days",
    ),
    pytest.param(
        'name = "Acme"',
        'name = "Acme"\ntimezone = "Europe/Nowhere"',
        r"^tenants\.acme\.timezone: 'Europe/Nowhere' is not an IANA time zone$",
        id="timezone",
    ),
    pytest.param(
        'name = "Acme"',
        'name = "Acme"\nconsent_policy = "maybe"',
        r"^tenants\.acme\.consent_policy: must be one of off, notify, opt_in$",
        id="consent",
    ),
    pytest.param(
        'name = "Acme"',
        'name = "Acme"\nrecording_retention_days = 0',
        r"^tenants\.acme\.recording_retention_days: must be at least 1, got 0$",
        id="retention",
    ),
    pytest.param(
        'name = "Acme"',
        'name = "Acme"\ngreeting = []',
        r"^tenants\.acme\.greeting: needs at least one sound",
        id="greeting-empty",
    ),
    pytest.param(
        'name = "Acme"',
        'name = "Acme"\ngreeting = ["sound:a&sound:b"]',
        r"^tenants\.acme\.greeting\[0\]: 'sound:a&sound:b' is not a media URI",
        id="greeting-ampersand",
    ),
    pytest.param("[agents.anna]", "[agents.Anna]", r"^agents\.Anna: is not an id", id="id"),
    pytest.param(
        'dids = ["48222001"]',
        'dids = ["48221001"]',
        r"^tenants\.beta\.dids\[0\]\.number: DID 48221001 is also tenants\.acme\.dids\[0\]$",
        id="duplicate-did",
    ),
    pytest.param(
        'number = "48221001"',
        "number = 48221001",
        r"^tenants\.acme\.dids\[0\]\.number: must be a string \(quote it",
        id="did-integer",
    ),
    pytest.param(
        'number = "48221001"',
        'number = "4822-1001"',
        r"^tenants\.acme\.dids\[0\]\.number: '4822-1001' is not a DID",
        id="did-syntax",
    ),
    pytest.param(
        'queue = "acme-sales"',
        'queue = "beta-support"',
        r"^tenants\.acme\.dids\[0\]\.queue: queue beta-support belongs to tenant beta, not acme$",
        id="did-other-tenants-queue",
    ),
    pytest.param(
        'queue = "acme-sales"',
        'queue = "acme-nothing"',
        r"^tenants\.acme\.dids\[0\]\.queue: unknown queue 'acme-nothing'$",
        id="did-unknown-queue",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "gamma"',
        r"^queues\.beta-support\.tenant: unknown tenant 'gamma'$",
        id="queue-unknown-tenant",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "beta"\nname = "~old"',
        r"^queues\.beta-support\.name: must not start with '~'",
        id="queue-name-reserved",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "acme"\nname = "acme-sales"',
        r"^queues\.beta-support\.name: 'acme-sales' is also queue acme-sales's name$",
        id="queue-name-twice",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "beta"\n[[queues.beta-support.overflow]]\nafter_s = 60\nqueue = "acme-sales"',
        r"^queues\.beta-support\.overflow\[0\]\.queue: queue acme-sales belongs to tenant acme",
        id="overflow-other-tenant",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "beta"\n[[queues.beta-support.overflow]]\nqueue = "acme-sales"',
        r"^queues\.beta-support\.overflow\[0\]: needs after_s or when_unstaffed = true$",
        id="overflow-when",
    ),
    pytest.param(
        'tenant = "beta"',
        'tenant = "beta"\n[[queues.beta-support.priority]]\npriority = 5\ndid = "48221001"',
        r"^queues\.beta-support\.priority\[0\]\.did: 48221001 is not a DID of tenant beta$",
        id="priority-other-tenants-did",
    ),
    pytest.param(
        '{queue = "beta-support", penalty = 1}',
        '{queue = "gamma-support", penalty = 1}',
        r"^agents\.anna\.queues\[1\]\.queue: unknown queue 'gamma-support'$",
        id="agent-unknown-queue",
    ),
    pytest.param(
        'queues = ["acme-sales",',
        'queues = ["acme-nothing",',
        r"^agents\.anna\.queues\[0\]: unknown queue 'acme-nothing'$",
        id="agent-unknown-queue-short-form",
    ),
    pytest.param(
        '{queue = "beta-support", penalty = 1}',
        '{queue = "acme-sales", penalty = 1}',
        r"^agents\.anna\.queues\[1\]\.queue: queue 'acme-sales' is also agents\.anna\.queues\[0\]$",
        id="agent-queue-twice",
    ),
    pytest.param(
        '{queue = "beta-support", penalty = 1}',
        '{queue = "beta-support", penalty = -1}',
        r"^agents\.anna\.queues\[1\]\.penalty: must be at least 0, got -1$",
        id="penalty",
    ),
    pytest.param(
        "skills = {polish = 8}",
        "skills = {polish = 0}",
        r"^agents\.anna\.skills\.polish: must be at least 1, got 0$",
        id="agent-skill-level",
    ),
    pytest.param(
        'endpoint = "PJSIP/agent-anna"',
        'endpoint = "agent anna"',
        r"^agents\.anna\.endpoint: 'agent anna' is not an endpoint like 'PJSIP/agent-anna'$",
        id="endpoint",
    ),
    pytest.param(
        'name = "Anna Nowak"',
        "",
        r"^agents\.anna\.name: is required$",
        id="required",
    ),
    pytest.param(
        "penalty = 1}]",
        'penalty = 1}]\n[agents.bob]\nname = "Bob"\nendpoint = "PJSIP/agent-anna"',
        r"^agents\.bob\.endpoint: PJSIP/agent-anna is also agent anna's$",
        id="endpoint-twice",
    ),
    pytest.param("[agents.anna]", "[agents.anna", r"^not valid TOML: ", id="toml"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD)
def test_invalid_file_names_the_key(old: str, new: str, expected: str) -> None:
    assert old in BASE, "the test must bend the base file"
    found = problems(BASE.replace(old, new, 1))
    assert len(found) == 1, found
    assert re.search(expected, found[0]), found[0]


def test_every_entity_reports_its_problem() -> None:
    text = BASE.replace("min_level = 5", "min_level = 0").replace(
        "skills = {polish = 8}", "skills = {polish = 80}"
    )
    assert problems(text) == [
        "queues.acme-sales.skills[0].min_level: must be at least 1, got 0",
        "agents.anna.skills.polish: must be at most 10, got 80",
    ]


def test_error_message_joins_problems() -> None:
    with pytest.raises(ConfigFileError, match=r"^tenants\.acme\.name: is required$"):
        parse(BASE.replace('name = "Acme"\n', "", 1))


def test_round_trip_of_the_example_is_stable() -> None:
    config = configfile.load(EXAMPLE)
    text = render(config)
    assert parse(text) == config
    assert render(parse(text)) == text
    assert diff(config, parse(text)) == ()


def test_render_reads_naturally() -> None:
    text = render(parse(BASE))
    assert '[tenants.acme.hours]\nmon-fri = "08:00-18:00"\n' in text
    assert "relax = [{after_s = 30, min_level = 3}, {after_s = 60, optional = true}]\n" in text
    assert 'queues = ["acme-sales", {queue = "beta-support", penalty = 1}]\n' in text
    assert '[[tenants.beta.dids]]\nnumber = "48222001"\n' in text


def test_diff_names_exactly_what_changed() -> None:
    before = parse(BASE)
    assert diff(before, before) == ()
    after = parse(
        BASE.replace("skills = {polish = 8}", "skills = {polish = 7, english = 3}")
        .replace('dids = ["48222001"]', 'dids = ["48222002"]')
        .replace("ring_timeout_s = 15", "ring_timeout_s = 20")
    )
    assert [str(c) for c in diff(before, after)] == [
        "- did 48222001",
        "+ did 48222002",
        "~ queue acme-sales: ring_timeout_s 15 -> 20",
        "~ agent anna: skills.polish 8 -> 7",
        "~ agent anna: +skills.english 3",
    ]
    assert diff(after, PbxConfig())[0] == Change("-", "tenant", "acme")


# -- a property: any valid config renders to a file that parses back to it ----------------

ids = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
seconds_ms = st.one_of(st.integers(1, 3600).map(lambda s: s * 1000), st.integers(1, 3_600_000))
clock = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
digits = st.sampled_from("0123456789*#")
consent_rules = (
    st.tuples(digits, digits)
    .filter(lambda d: d[0] != d[1])
    .flatmap(
        lambda d: st.builds(
            ConsentRules,
            st.sampled_from(list(ConsentPolicy)),
            st.just(d[0]),
            st.just(d[1]),
            st.sampled_from(["v1", "2026-03", "Wersja ż"]),
            seconds_ms,
            st.lists(
                st.sampled_from(["sound:beep", "digits:1", "recording:custom/x"]), max_size=3
            ).map(tuple),
        )
    )
)
recording_rules = st.builds(
    RecordingRules,
    st.sampled_from([(), ("mp3",), ("opus",), ("mp3", "opus")]),
    st.sampled_from(list(WithdrawalPolicy)),
    st.integers(1, 36500),
)


@st.composite
def configs(draw: st.DrawFn) -> PbxConfig:
    tenant_ids = draw(st.lists(ids, min_size=1, max_size=3, unique=True))
    tenants = []
    for tid in tenant_ids:
        hours = None
        if draw(st.booleans()):
            # One window a day at most, ending by midnight: windows never overlap.
            windows = []
            for day in draw(st.lists(st.integers(0, 6), unique=True, min_size=1, max_size=7)):
                start = time(draw(st.integers(0, 22)), draw(st.sampled_from([0, 30])))
                end_hour = draw(st.integers(start.hour + 1, 24))
                windows.append(OpenWindow(day, start, time(end_hour % 24)))
            windows.sort(key=lambda w: w.weekday)
            holidays = draw(st.frozensets(st.dates(date(2025, 1, 1), date(2030, 1, 1)), max_size=3))
            hours = BusinessHours(tuple(windows), holidays)
        tenants.append(
            TenantConfig(
                Tenant(
                    tid,
                    draw(
                        st.text(
                            st.characters(
                                min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"
                            ),
                            min_size=1,
                            max_size=20,
                        ).filter(str.strip)
                    ),
                    draw(st.sampled_from(["Europe/Warsaw", "UTC", "America/New_York"])),
                    tuple(
                        draw(
                            st.lists(
                                st.sampled_from(
                                    ["sound:beep", "sound:hello-world", "recording:custom/x"]
                                ),
                                min_size=1,
                                max_size=3,
                            )
                        )
                    ),
                    hours,
                    consent=draw(consent_rules),
                    recording=draw(recording_rules),
                ),
            )
        )
    queues = []
    for qid in draw(st.lists(ids, max_size=4, unique=True)):
        tenant_id = draw(st.sampled_from(tenant_ids))
        skills = []
        for skill in draw(st.lists(ids, max_size=2, unique=True)):
            level = draw(st.integers(2, 10))
            steps = []
            if draw(st.booleans()):
                steps.append(Relaxation(draw(seconds_ms), min_level=level - 1))
            if draw(st.booleans()):
                steps.append(Relaxation(4_000_000 + draw(seconds_ms), optional=True))
            skills.append(SkillRequirement(skill, level, tuple(steps)))
        queues.append(
            Queue(
                qid,
                tenant_id,
                name=qid,
                strategy=draw(st.sampled_from(list(Strategy))),
                skills=tuple(sorted(skills, key=lambda s: s.skill)),
                ring_timeout_ms=draw(seconds_ms),
                wrapup_ms=draw(st.integers(0, 600_000)),
                max_wait_ms=draw(seconds_ms),
                max_callers=draw(st.none() | st.integers(1, 100)),
                service_level_ms=draw(seconds_ms),
                default_priority=draw(st.integers(-5, 5)),
                priority_rules=tuple(
                    PriorityRule(p, prefix, "")
                    for p, prefix in draw(
                        st.lists(
                            st.tuples(
                                st.integers(-9, 9), st.from_regex(r"[0-9]{1,5}", fullmatch=True)
                            ),
                            max_size=2,
                        )
                    )
                ),
                overflow=tuple(
                    draw(
                        st.lists(
                            st.builds(
                                OverflowRule, seconds_ms, st.booleans(), st.none(), st.just("ctx-x")
                            ),
                            max_size=2,
                        )
                    )
                ),
                announcements=draw(
                    st.builds(
                        Announcements,
                        st.sampled_from(["default", "jazz"]),
                        st.booleans(),
                        st.booleans(),
                        st.integers(0, 100_000),
                        st.integers(1, 100_000),
                    )
                ),
            )
        )
    dids = []
    for number in draw(
        st.lists(st.from_regex(r"48[0-9]{4}", fullmatch=True), max_size=4, unique=True)
    ):
        tid = draw(st.sampled_from(tenant_ids))
        own = [q.id for q in queues if q.tenant_id == tid]
        queue_id = draw(st.none() | st.sampled_from(own)) if own else None
        label = draw(st.none() | st.just('Line "1"'))
        dids.append(DidConfig(number, tid, queue_id, label))
    agents = []
    queue_ids = [q.id for q in queues]
    for n, aid in enumerate(draw(st.lists(ids, max_size=3, unique=True))):
        chosen = draw(st.lists(st.sampled_from(queue_ids), unique=True)) if queue_ids else []
        memberships = tuple(
            QueueMembership(
                q, draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(1, 3))
            )
            for q in sorted(chosen)
        )
        levels = draw(st.dictionaries(ids, st.integers(1, 10), max_size=3))
        agents.append(
            AgentProfile(
                aid, f"Agent {n}", f"PJSIP/agent-{aid}", levels, memberships, draw(st.booleans())
            )
        )
    return PbxConfig(tuple(tenants), tuple(dids), tuple(queues), tuple(agents))


@settings(max_examples=100, deadline=None)
@given(configs())
def test_any_config_round_trips(config: PbxConfig) -> None:
    text = render(config)
    assert parse(text) == config, text
    assert diff(config, parse(text)) == ()
