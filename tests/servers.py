"""Real servers for tests: a free port to put one on, and a redis-server that tests may kill,
freeze and restart."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `password` turns on `requirepass`."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
        if self.password:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_for_ping()

    def kill(self) -> None:
        """SIGKILL: connections reset, new ones refused."""
        process = self._running()
        process.kill()
        process.wait()
        self._process = None

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers."""
        self._running().send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
            self.kill()

    def _running(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "redis-server is not running"
        return self._process

    def _wait_for_ping(self) -> None:
        ping = b"PING\r\n"
        if self.password:
            ping = f"AUTH {self.password}\r\nPING\r\n".encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(ping)
                    answer = b""
                    while b"+PONG" not in answer and (chunk := sock.recv(100)):
                        answer += chunk
                    if b"+PONG" in answer:
                        return
            except OSError:
                pass
            assert self._running().poll() is None, "redis-server exited at start"
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer PING within 10 s")
