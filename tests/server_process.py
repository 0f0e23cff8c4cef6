"""A real teacher-server process for tests: ``opdkit serve-teacher`` on 127.0.0.1 and a free port.

A plain module (not a conftest) so that test folders with a conftest of their own can import it by name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    api_key: str | None
    proc: subprocess.Popen
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def start_server(model_dir: Path, log_path: Path, *args: str, api_key: str | None = None) -> ServerProcess:
    """``opdkit serve-teacher`` on a free 127.0.0.1 port; returns once ``/health`` answers."""
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "opdkit",
        "serve-teacher",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *args,
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", api_key, proc, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"teacher server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(server.url + "/health", headers=server.headers, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"teacher server did not start in 90 s:\n{log_path.read_text()}")


def stop_server(server: ServerProcess) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
