"""A real Redis server (Debian's ``redis-server``, installed by ``make tools``), started as a subprocess on a
free loopback port for the tests of quotas shared by several gateways; nothing is saved to disk.

    with RedisServer() as redis:
        config["limits"]["store"] = redis.url
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

import localstack


class RedisServer:
    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = binary
        self.port = localstack.free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        found = shutil.which(self.binary)
        if found is None:
            raise RuntimeError(f"{self.binary} is not installed: run `make tools` (Debian's redis-server package)")
        command = [found, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING within {timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
