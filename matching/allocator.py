"""Which malloc an engine process runs on.

A worker holding a large registry keeps gigabytes of posting arrays in memory,
built and rebuilt in big pieces. Under glibc's malloc that heap fragments, and
every later allocation searches long free lists: at 10,000 works SIFT took 1.5x
its 200-work time in the same code (docs/benchmarks.md). jemalloc keeps the
two apart. It has to be loaded before anything allocates, so it is preloaded
(``LD_PRELOAD``) into a new process: ``artwatch worker`` restarts itself once
with it, ``artwatch scan`` starts its pool with it, and the Docker image sets
it for every service. ``matching.allocator = "system"`` turns this off.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["jemalloc_env", "jemalloc_library", "reexec_with_jemalloc", "running_jemalloc"]

log = logging.getLogger(__name__)

#: Set in the environment of the restarted process, so it never loops.
_RESTARTED = "JEMALLOC_RESTARTED_BY_ARTWATCH"  # not ARTWATCH_*: settings reject unknown keys


def jemalloc_library() -> str | None:
    """The jemalloc shared library's name as the loader finds it, or None when not installed
    (Debian: ``apt-get install libjemalloc2``)."""
    return ctypes.util.find_library("jemalloc")


def running_jemalloc() -> bool:
    """Whether this process has jemalloc loaded."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            return any("libjemalloc" in line for line in fh)
    except OSError:  # pragma: no cover - not Linux
        return False


def jemalloc_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """``env`` with jemalloc added to ``LD_PRELOAD``; None when jemalloc is not installed."""
    lib = jemalloc_library()
    if lib is None:
        return None
    out = dict(env)
    preload = out.get("LD_PRELOAD", "")
    if "jemalloc" not in preload:
        out["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    return out


def reexec_with_jemalloc(argv: Sequence[str] | None = None) -> None:
    """Replace this process with the same command line (or ``python argv...``) on jemalloc.

    The process keeps its id (tests and supervisors that hold it still do).
    Returns without doing anything when jemalloc is already loaded, when this
    is the restarted process, or when jemalloc is not installed (logged).
    """
    if running_jemalloc() or os.environ.get(_RESTARTED):
        return
    env = jemalloc_env(os.environ)
    if env is None:
        log.warning("jemalloc is not installed (apt-get install libjemalloc2): running on the system "
                    "malloc, which slows a worker holding a large registry")
        return
    env[_RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps "-m workers" and interpreter options that argv has lost.
    args = list(sys.orig_argv[1:]) if argv is None else list(argv)
    os.execve(sys.executable, [sys.executable, *args], env)
