"""jemalloc for engine processes: found, preloaded into a restarted process, never looping."""

from __future__ import annotations

import os
import subprocess
import sys

from matching.allocator import jemalloc_env, jemalloc_library


def test_jemalloc_is_installed_here() -> None:
    # .ci/services installs libjemalloc2; the engine's speed figures assume it.
    assert jemalloc_library() is not None


def test_jemalloc_env_adds_the_library_once_and_keeps_other_preloads() -> None:
    lib = jemalloc_library()
    assert jemalloc_env({"PATH": "/bin"}) == {"PATH": "/bin", "LD_PRELOAD": lib}
    both = jemalloc_env({"LD_PRELOAD": "libfoo.so"})
    assert both == {"LD_PRELOAD": f"{lib}:libfoo.so"}
    assert jemalloc_env(both) == both


def test_a_process_restarts_itself_on_jemalloc_with_the_same_command_line() -> None:
    script = (
        "import sys\n"
        "from matching.allocator import reexec_with_jemalloc, running_jemalloc\n"
        "print('start', running_jemalloc(), sys.argv[1:], flush=True)\n"
        "reexec_with_jemalloc()\n"
        "print('after', running_jemalloc(), sys.argv[1:], flush=True)\n"
        "reexec_with_jemalloc()  # already on jemalloc: returns\n"
        "print('done', flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and k != "JEMALLOC_RESTARTED_BY_ARTWATCH"}
    out = subprocess.run([sys.executable, "-c", script, "x", "--y"], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    assert out == ["start False ['x', '--y']", "start True ['x', '--y']", "after True ['x', '--y']", "done"]
