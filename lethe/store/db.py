"""Opening the request store: an engine per URL, the schema migrated to head (Alembic), and
write transactions that serialise claimers on SQLite as `FOR UPDATE SKIP LOCKED` does on PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lethe.errors import LetheError, redact_userinfo

MIGRATIONS = Path(__file__).with_name("migrations")
# alembic's `context` is one module-level proxy: two migrations in one process at once would share it.
# Across processes the database serialises them (env.py).
_MIGRATING = threading.Lock()


class StoreError(LetheError):
    """The request store cannot be reached, or a request cannot change as asked."""


@dataclass
class Store:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any error."""
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})

        # pysqlite begins transactions lazily, at the first write: two claimers would both read the
        # same queued rows first. BEGIN IMMEDIATE takes the write lock when the transaction starts.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # pool_pre_ping: a nightly holds its engine for hours, the server may have restarted meanwhile.
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with several processes at once)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATING, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_store(url: str) -> Store:
    """The store at `url`, migrated; one line naming the (redacted) URL when it cannot be reached."""
    engine = _engine(url)
    try:
        migrate(engine)
    except (OperationalError, DBAPIError) as e:
        engine.dispose()
        # The driver's message can name host and user, never the password (it is not in the URL).
        reason = (
            str(getattr(e, "orig", e)).strip().splitlines()[0]
            if str(getattr(e, "orig", e)).strip()
            else type(e).__name__
        )
        raise StoreError(
            "cannot open the request store",
            where=redact_userinfo(url),
            expected="a reachable database (requests.db_url / --requests-db)",
            seen=reason,
        ) from None
    return Store(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
