"""A real PostgreSQL server (Debian's ``postgresql`` package, installed by ``make tools``), a throwaway cluster
made with its own ``initdb`` in a temporary directory and started with ``pg_ctl`` on a free loopback port;
as root (PostgreSQL refuses to run as root) the cluster belongs to the package's ``postgres`` user.

    with PostgresServer() as postgres:
        config["shadows"]["database_url"] = postgres.url
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import localstack


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make tools` (Debian's postgresql package)")
    return found[-1].parent


class PostgresServer:
    def __init__(self) -> None:
        self.port = localstack.free_port()
        self.data = Path(tempfile.mkdtemp(prefix="turnout-postgres-"))
        self._bin = _bin_dir()

    @property
    def url(self) -> str:
        return f"postgresql://turnout@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        command = [str(self._bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "turnout", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["PostgresServer"]
