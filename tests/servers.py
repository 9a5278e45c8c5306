"""Servers the tests start themselves: on 127.0.0.1, a free port, stopped by their PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def serve(name: str, cmd: list[str], port: int, log_dir: Path,
          ready: Callable[[], bool] | None = None, timeout: float = 120.0,
          env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``cmd`` in its own process group, wait until ``ready()`` (default: the port
    accepts connections), yield it, then stop the whole group by its PID."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    server = Server(name, port, proc, log)
    check = ready or (lambda: port_open(port))
    try:
        deadline = time.monotonic() + timeout
        while not check():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever of the group is left after ``grace``
    seconds (a wrapper may exit at once while the server it started is still shutting down)."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def python() -> str:
    return sys.executable


def http_ready(url: str) -> Callable[[], bool]:
    """A ``ready`` check for ``serve``: ``url`` answers with a 2xx status."""

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).is_success
        except httpx.HTTPError:
            return False

    return ready


@contextlib.contextmanager
def serve_api(name: str, data: Path, env: dict[str, str], timeout: float = 120.0
              ) -> Iterator[str]:
    """Our API in a uvicorn process with its data in ``data``; yields its base URL."""
    port = free_port()
    env = {"PYTHONPATH": str(REPO), "RAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", **env}
    with serve(name, [python(), "-m", "uvicorn", "--factory", "api.app:app_factory", "--host",
                      "127.0.0.1", "--port", str(port)], port, data,
               ready=http_ready(f"http://127.0.0.1:{port}/healthz"), env=env, timeout=timeout):
        yield f"http://127.0.0.1:{port}"

