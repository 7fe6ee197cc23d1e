"""Why an xdist worker died, at the end of the run's output.

A worker that dies in native code (a segfault) or is killed (the OOM killer, a stray signal) shows
only as "worker 'gwN' crashed" in the summary; its Python traceback, if any, went to stderr
somewhere above. Each worker's faulthandler writes to a file of its own instead, and the
controller prints what a crashed worker left there, with the kernel's word on killed processes,
below the summary where a CI excerpt shows it.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_DIR_VARIABLE = "ML_PLATFORM_TEST_CRASH_DIR"
_KERNEL_WORDS = ("segfault", "out of memory", "oom-kill", "killed process", "general protection")


@pytest.hookimpl(trylast=True)  # after pytest's faulthandler plugin, which points it at stderr
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller made the directory
        folder = os.environ.get(_DIR_VARIABLE)
        if folder:
            worker = config.workerinput["workerid"]
            config._crash_file = open(Path(folder) / f"{worker}-{os.getpid()}.log", "w")  # noqa: SIM115
            faulthandler.enable(file=config._crash_file, all_threads=True)
    elif config.getoption("numprocesses", None):
        os.environ[_DIR_VARIABLE] = tempfile.mkdtemp(prefix="ml-platform-crashes-")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    folder = os.environ.get(_DIR_VARIABLE)
    if hasattr(config, "workerinput") or not folder or not Path(folder).is_dir():
        return
    crashed = [r for r in terminalreporter.stats.get("failed", []) if _is_crash(r)]
    if crashed:
        terminalreporter.section("crashed workers", sep="=", red=True)
        for path in sorted(Path(folder).glob("*.log")):
            text = path.read_text(errors="replace").strip()
            if text:
                terminalreporter.write_line(f"--- faulthandler of {path.stem} ---")
                terminalreporter.write_line("\n".join(text.splitlines()[-80:]))
        terminalreporter.write_line(_kernel_messages())
    shutil.rmtree(folder, ignore_errors=True)


def _is_crash(report) -> bool:
    return "crashed while running" in str(getattr(report, "longrepr", ""))


def _kernel_messages() -> str:
    """Killed or crashed processes in the kernel log: a SIGKILL leaves no Python traceback."""
    try:
        out = subprocess.run(["dmesg", "-T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"kernel log unreadable ({exc}); no traceback above means SIGKILL or os._exit"
    lines = [line for line in out.splitlines() if any(w in line.lower() for w in _KERNEL_WORDS)]
    return "kernel log on killed processes:\n" + ("\n".join(lines[-20:]) or "(none)")
