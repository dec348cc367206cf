"""A real throwaway PostgreSQL server (Debian's `postgresql` binaries: initdb + pg_ctl) on
127.0.0.1 in a temp dir, with password authentication, for tests and benchmarks. Stopped through its
own data dir's postmaster pid; nothing else on the machine is touched.

PostgreSQL refuses to run as root: under root (CI) the server runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lethe.testing.seaweedfs import free_port

USER = "lethe"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str  # give it through PGPASSWORD: never in a URL

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin dir, or None when the server package is missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (make postgres)")
    tmp = Path(tempfile.mkdtemp(prefix="lethe-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    password = secrets.token_hex(16)
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    if as_postgres:
        shutil.chown(pwfile, "postgres")
    pwfile.chmod(0o600)
    data, port = tmp / "data", free_port()
    log = tmp / "server.log"

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True, cwd=tmp)

    try:
        run(
            str(bins / "initdb"),
            "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c full_page_writes=off"
        run(str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as e:
        tail = log.read_text()[-2000:] if log.exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {e.stderr or e.stdout}\n{tail}") from e
    try:
        yield PostgresServer("127.0.0.1", port, password)
    finally:
        subprocess.run(
            [*as_postgres, str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            cwd=tmp,
        )
        shutil.rmtree(tmp, ignore_errors=True)
