"""Fixtures of the fault tests (defined in the harness so the ops integration tests can share them)."""

from tests.fault.harness import deployment  # noqa: F401  (fixture)
