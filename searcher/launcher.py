"""Start `dff-serve` (or `dff-web`) as a child process and learn its port: the one launcher of
the demo, `dff-web --index`, the benchmarks and the end-to-end tests.

`dff-serve --port 0` binds a free port and prints `dff-serve: listening on HOST:PORT` once the
index and the model are loaded (`dff-web --port 0`: `dff-web: page at http://HOST:PORT/`);
`launch_child` reads that line (no port guessing, no race with another process taking a "free"
port), so when it returns the server is answering.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SERVE_LISTENING = re.compile(r"dff-serve: listening on (\S+):(\d+)")
WEB_LISTENING = re.compile(r"dff-web: page at (http://(\S+):(\d+)/)")


def console_script(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


class ChildProcess:
    """A running server child: `.port`, `.host`, `.process`, `.match` (its ready line), `.stop()`."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, match: re.Match, log_path: Path | None) -> None:
        self.process, self.host, self.port, self.match, self.log_path = process, host, port, match, log_path

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's address (dff-web children)."""
        return self.match.group(1)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the server drains in-flight requests), then SIGKILL after `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_serve(
    index: str | Path,
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    log_path: str | Path | None = None,
    timeout: float = 180.0,
) -> ChildProcess:
    """Start `dff-serve --index INDEX --host HOST --port 0 EXTRA_ARGS` and wait for its port.

    The server's log (stderr) goes to `log_path` (appended; None: this process's stderr).
    Raises RuntimeError with the log's tail when the server exits or stays silent for `timeout`.
    """
    command = [console_script("dff-serve"), "--index", str(index), "--host", host, "--port", "0", *extra_args]
    return launch_child(command, SERVE_LISTENING, log_path=log_path, timeout=timeout)


def launch_web(
    grpc_target: str,
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    log_path: str | Path | None = None,
    timeout: float = 60.0,
) -> ChildProcess:
    """Start `dff-web --grpc TARGET --host HOST --port 0 EXTRA_ARGS`; `.url` is the page's address."""
    command = [console_script("dff-web"), "--grpc", grpc_target, "--host", host, "--port", "0", *extra_args]
    return launch_child(command, WEB_LISTENING, log_path=log_path, timeout=timeout)


def launch_child(
    command: Sequence[str],
    ready: re.Pattern,
    *,
    log_path: str | Path | None = None,
    timeout: float = 180.0,
) -> ChildProcess:
    """Run `command`, wait for a stdout line matching `ready` (its last two groups: host, port)."""
    name = Path(command[0]).name
    log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True)
    finally:
        if log_file is not None:
            log_file.close()  # the child holds its own descriptor
    lines: queue.Queue[str] = queue.Queue()
    # a reader thread, so that a silent server cannot block us past the timeout
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
            match = ready.search(line)
            if match:
                host, port = match.group(match.re.groups - 1), int(match.group(match.re.groups))
                return ChildProcess(process, host, port, match, Path(log_path) if log_path else None)
            if line == "":  # end of output: the server exited
                process.wait()
                raise RuntimeError(
                    f"{name} exited with code {process.returncode} before it listened" + _log_tail(log_path)
                )
        raise RuntimeError(f"{name} did not print its port within {timeout:.0f} s" + _log_tail(log_path))
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


def _log_tail(log_path: str | Path | None, lines: int = 20) -> str:
    if log_path is None or not Path(log_path).exists():
        return ""
    tail = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    return "; its log ends with:\n" + "\n".join(tail)
