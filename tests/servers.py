"""Real servers for tests: a free port to put one on, a redis-server that tests may kill, freeze
and restart, and the base of the local HTTP stubs that stand in for remote services."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


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


class LocalHTTPStub:
    """A threaded HTTP server on a free local port that stands in for a remote service.

    Subclasses answer each POST in `post(handler, body)` (`body`: the parsed JSON), with
    `send_json` for a whole JSON reply. `release` is set on stop, so a handler that holds a
    request (`release.wait(...)`) lets go. Start and stop it, or use it as a context manager.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                stub.post(self, json.loads(self.rfile.read(length) or b"{}"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ending in `/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def post(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
