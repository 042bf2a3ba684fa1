"""Shared fixtures: each stack is synthesized once per session, under Pulumi's mocks.

`staging` and `prod` hold everything the real stack files declare; `synth` runs the program on
a variant of a stack's config (for the cases a stack file does not show). Every config is
synthesized once per session, whoever asks (a fixture, or a command such as `offline.plan` run
in-process): the result depends on the config alone, which tests/test_diff_plan.py proves across
processes.

The project's modules are imported inside the fixtures: pytest-xdist's controller loads this file
too, and runs no test.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from offline.synth import Synthesis

pytest_plugins = ["tests.moto_server", "tests.mutation_credit"]


def pytest_configure(config):
    """The suite keeps large structures for its whole run (each synthesis, moto's snapshots): with
    Python's default thresholds the collector walks them every few thousand allocations, a fifth
    of the suite's CPU time. Garbage is still collected, fifty times less often."""
    gc.set_threshold(100_000, 50, 100)


def pytest_collection_modifyitems(items):
    """Tests marked `first` go first: started last, a long one would end the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)


def pytest_sessionfinish(session, exitstatus):
    """pytest walks the heap five times at exit for unraisable exceptions (~3 s a process with the
    session's syntheses and snapshots): what the session made lives until exit anyway."""
    gc.freeze()


_SYNTHESES: dict[tuple, Synthesis] = {}
_SYNTHESIS_HITS: dict[tuple, set[str]] = {}  # under make mutate's stats run: the functions each ran
_REAL_SYNTHESIZE: list[Callable[..., Synthesis]] = []  # offline.synth's own, set before it is patched


def synthesize_once(stack: str, raw: dict | None = None, secret_keys: set[str] | None = None,
                    program: Callable[[], None] | None = None) -> Synthesis:
    from infra.stack_files import read_stack_file
    from tests import mutation_credit

    synthesize = _REAL_SYNTHESIZE[0]
    if program is not None:  # another entry point: not the config alone
        return synthesize(stack, raw, secret_keys, program)
    if raw is None:
        raw, file_keys = read_stack_file(stack)
        secret_keys = file_keys if secret_keys is None else secret_keys
    # In the order written: a synthesis keeps it (tags, say), so a copy of a stack file with its
    # keys in another order is another synthesis, not this one served again.
    key = (stack, json.dumps(raw, default=str), tuple(sorted(secret_keys or ())))
    if key not in _SYNTHESES:
        with mutation_credit.recording(_SYNTHESIS_HITS.setdefault(key, set())):
            _SYNTHESES[key] = synthesize(stack, raw, secret_keys)
    else:
        mutation_credit.credit(_SYNTHESIS_HITS.get(key, set()))  # what the synthesis ran, for make mutate
    return _SYNTHESES[key]


@pytest.fixture(scope="session", autouse=True)
def _each_config_synthesized_once():
    import offline.plan
    import offline.synth

    # A session's syntheses are its own: mutmut runs each mutant's session in a process forked from
    # one that ran the unmutated tests, whose syntheses would hide a mutant in the config or program.
    _SYNTHESES.clear()
    _SYNTHESIS_HITS.clear()
    # And its own event loop: in a forked process the threads of the last loop's executor, where
    # Pulumi's mocks run, are gone, and a synthesis would wait for them forever.
    asyncio.set_event_loop(asyncio.new_event_loop())
    _REAL_SYNTHESIZE[:] = [offline.synth.synthesize]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offline.synth, "synthesize", synthesize_once)  # offline.diff, offline.cost
        mp.setattr(offline.plan, "synthesize", synthesize_once)
        yield


def within_one_minute(seconds: float = 10) -> None:
    """Per-minute limits start again with each UTC minute: a case that counts against one starts
    with `seconds` left in its minute (waiting at most that long for the next)."""
    import time

    if time.time() % 60 > 60 - seconds:
        time.sleep(60 - time.time() % 60 + 0.05)


@pytest.fixture(scope="module")
def valkey(tmp_path_factory):
    """A real Valkey-compatible server with TLS and AUTH (tests/valkey_server.py), one per module."""
    from tests import valkey_server

    server = valkey_server.start(tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()


@pytest.fixture
def fake(upstream, valkey):
    """The module's fake upstream (its `upstream` fixture), its script and record emptied, and the
    store flushed: each test starts with no counters, entries or locks."""
    valkey.client().flushall()
    upstream.fake.script, upstream.fake.requests = [], []
    return upstream.fake


@pytest.fixture(scope="session")
def staging() -> Synthesis:
    return synthesize_once("staging")


@pytest.fixture(scope="session")
def prod() -> Synthesis:
    return synthesize_once("prod")


@pytest.fixture(scope="session", params=["staging", "prod"])
def stack(request, staging, prod) -> Synthesis:
    return {"staging": staging, "prod": prod}[request.param]


def stack_config(stack: str) -> tuple[dict[str, Any], set[str]]:
    from infra.stack_files import read_stack_file

    raw, secret_keys = read_stack_file(stack)
    return copy.deepcopy(raw), set(secret_keys)


def with_changes(stack: str, **changes: Any) -> tuple[dict[str, Any], set[str]]:
    """A stack's config with `section__field=value` changes (a value of DELETE removes it)."""
    raw, secret_keys = stack_config(stack)
    for dotted, value in changes.items():
        section, _, fld = dotted.partition("__")
        key = section if ":" in section else f"llm-service:{section}"
        if not fld:
            raw[key] = value
            continue
        raw.setdefault(key, {})[fld] = value
    return raw, secret_keys


@pytest.fixture(scope="session")
def synth() -> Callable[..., Synthesis]:
    def run(stack: str, secret_keys: set[str] | None = None, raw: dict | None = None,
            **changes: Any) -> Synthesis:
        if raw is None:
            raw, keys = with_changes(stack, **changes)
            secret_keys = keys if secret_keys is None else secret_keys
        return synthesize_once(stack, raw=raw, secret_keys=secret_keys or set())
    return run


def policy(resource) -> dict:
    value = resource.inputs["policy"]
    return json.loads(value) if isinstance(value, str) else value


def container(stack: Synthesis) -> dict:
    task = stack.one("aws:ecs/taskDefinition:TaskDefinition")
    (app,) = json.loads(task.inputs["containerDefinitions"])
    return app


def config_of(stack: Synthesis):
    """The validated config of a synthesized stack's file."""
    from infra.config import load
    return load(*stack_config(stack.stack))


def help_text(main: Callable[[list[str]], Any], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> str:
    """What `main(["--help"])` prints, at 80 columns (argparse wraps to the terminal's width)."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def refusal(main: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The line argparse ends with when `main(argv)` is a wrong command line (it exits 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]
