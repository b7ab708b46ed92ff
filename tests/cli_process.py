"""The real ``artwatch`` command in a subprocess, and what its stderr may hold.

A known failure is exactly one ``error:`` line (ApprovalRefused adds indented
detail lines under it) and exit status 2, never a traceback; a healthy command
writes no log lines at the default log level. The subprocess inherits the
environment, so the ``test_settings`` fixture's data folder applies.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

__all__ = ["LOG_LINE", "artwatch", "assert_clear_error", "assert_quiet"]

# config.logging's text format: "<date> <time>,<ms> LEVEL logger: message".
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", re.MULTILINE)


def artwatch(*args: str, env: dict[str, str] | None = None,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m workers ARGS`` with stdin from ``input`` (empty, not a terminal, when None)."""
    return subprocess.run([sys.executable, "-m", "workers", *args], check=False, capture_output=True,
                          text=True, input=input if input is not None else "", env={**os.environ, **(env or {})},
                          timeout=120)


def assert_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert not LOG_LINE.search(proc.stderr), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    """Exit status 0 and nothing at all on stderr (no log lines, no warnings)."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
