"""searcher.launcher: the port comes from the child's ready line; a child that dies or stays
silent is reported with its log, and killed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from searcher.launcher import SERVE_LISTENING, WEB_LISTENING, launch_child


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_port_is_read_from_the_ready_line_and_stop_terminates(tmp_path: Path) -> None:
    child = launch_child(
        _python("import time; print('loading', flush=True); "
                "print('dff-web: page at http://127.0.0.1:4321/ (search server x)', flush=True); time.sleep(60)"),
        WEB_LISTENING, log_path=tmp_path / "log", timeout=30,
    )
    assert (child.host, child.port, child.url) == ("127.0.0.1", 4321, "http://127.0.0.1:4321/")
    started = time.monotonic()
    assert child.stop(timeout=10) != 0 and time.monotonic() - started < 10  # SIGTERM ended the sleep
    assert child.process.poll() is not None


def test_a_child_that_exits_first_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError, match=r"exited with code 3 before it listened(.|\n)*index is damaged"):
        launch_child(_python("import sys; sys.stderr.write('index is damaged\\n'); sys.exit(3)"),
                     SERVE_LISTENING, log_path=log, timeout=30)


def test_a_silent_child_times_out_and_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not print its port within 1 s"):
        launch_child(_python("import time; time.sleep(60)"), SERVE_LISTENING, log_path=tmp_path / "log", timeout=1)
    assert time.monotonic() - started < 20
