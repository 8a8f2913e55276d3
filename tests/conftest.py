"""Shared test setup: the real-service fixtures live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.asterisk",
    "tests.fixtures.postgres",
]
