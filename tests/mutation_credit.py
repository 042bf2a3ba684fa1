"""Which tests reach which functions, under `make mutate`'s stats run (MUTANT_UNDER_TEST=stats).

mutmut credits a function to the test during which it ran, and tests each mutant of it with those
tests only. Work done once and shared would be credited to the first test alone: what runs while
modules are imported (the config models are built then), a session's or module's fixtures (the
stacks' syntheses), a synthesis served again from the session's cache, and what a gateway process
runs. Here each is credited to every test that uses it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

_IMPORT_HITS: set[str] = set()
_FIXTURE_HITS: dict[str, set[str]] = {}


def _stats() -> set[str] | None:
    """mutmut's record of the functions run so far in this test, under its stats run."""
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return None
    from mutmut.state import state

    return state()._stats  # noqa: SLF001 - mutmut's own record


@contextmanager
def recording(into: set[str]) -> Iterator[None]:
    """Add what runs in the block to `into` (and credit it to the running test as well)."""
    stats = _stats()
    if stats is None:
        yield
        return
    before = set(stats)
    stats.clear()
    try:
        yield
    finally:
        into |= stats
        stats |= before


def credit(hits: set[str]) -> None:
    """Credit `hits` to the running test."""
    stats = _stats()
    if stats is not None:
        stats |= hits


def pytest_collection_finish(session):
    """What ran while the tests' modules were imported goes to the tests marked `fresh_process`: a
    mutant of it takes effect only in a process that imports the modules afresh, as they start."""
    stats = _stats()
    if stats is not None:
        _IMPORT_HITS.update(stats)
        stats.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """What a session's or a module's fixture ran goes to every test that uses the fixture."""
    if _stats() is None or fixturedef.scope == "function":
        yield
        return
    with recording(_FIXTURE_HITS.setdefault(fixturedef.argname, set())):
        yield


@pytest.hookimpl(tryfirst=True)  # before mutmut's own teardown hook reads the record
def pytest_runtest_teardown(item):
    if _stats() is None:
        return
    if item.get_closest_marker("fresh_process"):
        credit(_IMPORT_HITS)
    for name in item.fixturenames:
        credit(_FIXTURE_HITS.get(name, set()))
    # What a gateway process ran during the test (mutation/hook writes it to MUTATION_HITS).
    hits = os.environ.get("MUTATION_HITS")
    if hits and os.path.exists(hits):
        with open(hits, "r+") as f:
            credit({line for line in f.read().splitlines() if line})
            f.truncate(0)
