"""Shared fixtures, and the CI rule that service tests may not skip when CI runs as root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SERVICE_MARKERS = ("root", "gridengine", "dirac", "browser", "postgres")

_skipped_service_tests: list[str] = []


def in_ci_as_root() -> bool:
    """CI runs as root with CI=true: there, service tests must run, not skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") and os.geteuid() == 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        _skipped_service_tests.append(f"{item.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _skipped_service_tests and in_ci_as_root():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "CI as root: these service tests skipped (CI forbids it):", red=True
            )
            for line in _skipped_service_tests:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def full_disk():
    """Mount a 64 KiB tmpfs at a directory and fill it: writes there fail with ENOSPC.

    A function ``mount(path) -> path``; the mounts go at the end of the test. Mounting needs
    root (tests using it carry the ``root`` marker: CI as root must run them).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root; CI runs as root")
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
        mounted.append(path)
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space"):
                for _ in range(100):
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
