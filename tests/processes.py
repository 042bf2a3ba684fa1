"""Servers the tests start die with the test process that started them, however it ends: a test
process killed (mutmut's time limit, a cancelled run, a crash) would otherwise leave its Valkey and
gateway processes running, and `make mutate` kills one for each mutant that runs past its limit."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen that has the kernel kill the child when its parent
    dies (Linux; elsewhere None, and the child outlives a killed parent as before)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return arm
