"""Loaded by a gateway process the tests start during mutmut's stats run (tests/gateway_process.py
puts this folder on its PYTHONPATH): each function of the mutated modules the process runs is
written to MUTATION_HITS, which tests/conftest.py credits to the test running at the time. Without
it, mutmut would see only what runs inside the test process and find no test for the gateway's
request path.
"""

import os

import mutmut.mutation.trampoline as trampoline

_fd = os.open(os.environ["MUTATION_HITS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _record(name: str, caller: str | None = None) -> None:
    os.write(_fd, f"{name}\n".encode())  # unbuffered: the process may be killed at any time


trampoline.record_trampoline_hit = _record
