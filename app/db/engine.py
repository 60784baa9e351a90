"""Engines for SQLite (embedded) and PostgreSQL (shared by many receivers)."""

from __future__ import annotations

import math
import time
import weakref
from typing import Any

from sqlalchemy import Engine, PoolProxiedConnection, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError

from app.db.sqlite_setup import configure_connection
from app.json_text import json_text


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for other databases and for in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_connection(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that later upgrades can fail
        # with SQLITE_BUSY instead of waiting.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def postgres_connect_args(timeout_seconds: float | None) -> dict[str, Any]:
    """libpq settings so that a database that is down, cut off or hung fails a connection in bounded
    time instead of holding it: a connect timeout, TCP keep-alives and a TCP user timeout (a black
    hole), and with ``timeout_seconds`` (a receiver) lock and statement limits derived from it."""
    connect_seconds = max(1, math.ceil(timeout_seconds)) if timeout_seconds else 10
    args: dict[str, Any] = {
        "connect_timeout": connect_seconds,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 1000 * (connect_seconds + 10),
    }
    if timeout_seconds:
        milliseconds = int(timeout_seconds * 1000)
        # A commit's statements take milliseconds; three times the answer's deadline frees a writer
        # that the database holds long after its delivery was answered 503.
        args["options"] = (
            f"-c lock_timeout={milliseconds} -c statement_timeout={3 * milliseconds}"
            " -c idle_in_transaction_session_timeout=60000"
        )
    return args


def make_engine(
    url: str, *, for_writing: bool = True, timeout_seconds: float | None = None, **kwargs: Any
) -> Engine:
    """``for_writing=False`` gives SQLite readers plain BEGIN so they never wait for the writer.
    ``timeout_seconds`` (a receiver's deadline) bounds waits on PostgreSQL: connecting, a connection
    from the pool, locks and statements (postgres_connect_args). A PostgreSQL engine pings a
    connection before handing it out, a writing one only when it was not used in the last
    RECENT_SECONDS (or was given back before a lost connection: mark_connections_suspect)."""
    url = normalize_url(url)
    kwargs.setdefault("json_serializer", json_text)
    if is_sqlite(url):
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, immediate=for_writing)
        return engine
    if timeout_seconds:
        kwargs.setdefault("pool_timeout", timeout_seconds)
    kwargs.setdefault("connect_args", postgres_connect_args(timeout_seconds))
    if not for_writing:
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **kwargs)
    # No statements PREPAREd by psycopg itself: after rolling back a transaction or a savepoint it had
    # PREPAREd some in, it sends DEALLOCATE ALL, which drops those app.mirror.pipelined_query keeps too.
    kwargs["connect_args"] = {**kwargs["connect_args"], "prepare_threshold": None}
    engine = create_engine(url, pool_size=5, max_overflow=5, **kwargs)
    _ping_unless_recently_used(engine)
    return engine


# A writing engine's connection given back less than this long ago is handed out without a ping: a
# receiver under load checks one out per batch, and a ping per batch was one more round trip that
# only confirmed what the previous batch had just shown (issue #15).
RECENT_SECONDS = 2.0
_CHECKED_IN = "billing_mirror_checked_in"
# Per writing engine: when its connections were last marked suspect (mark_connections_suspect).
_suspect_since: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def _ping_unless_recently_used(engine: Engine) -> None:
    """pool_pre_ping, except for connections that worked less than RECENT_SECONDS ago and were given
    back since the last mark_connections_suspect; a connection that fails its ping is replaced."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKED_IN)
        if checked_in is not None and recently_used(engine, checked_in):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # As pool_pre_ping: this connection and every one older than it are replaced.
            raise InvalidatePoolError(f"the connection failed its ping: {exc}") from exc


def recently_used(engine: Engine, last_used: float) -> bool:
    """Whether a connection of ``engine`` last known to work at ``last_used`` (time.monotonic()) may
    be used without a ping: less than RECENT_SECONDS ago, and after the last mark_connections_suspect."""
    return time.monotonic() - last_used < RECENT_SECONDS and last_used > _suspect_since.get(engine, -math.inf)


class HeldConnection:
    """A pooled connection of a writing engine that one thread keeps from one transaction to the
    next (a receiver's writer, batch after batch): a checkout and a checkin per transaction were a
    tenth of a lone delivery's writer CPU (bench/README.md, eighth session). Pinged before use when
    the pool would ping it (``recently_used``); given back by ``release``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pooled: PoolProxiedConnection | None = None
        self._last_used = -math.inf

    def take(self) -> PoolProxiedConnection:
        pooled = self.usable_now()
        if pooled is not None:
            return pooled
        if self._pooled is not None:
            try:
                if self._pooled.dbapi_connection is None:  # (invalidated)
                    raise ConnectionError("the held connection was closed")
                self.engine.dialect.do_ping(self._pooled.dbapi_connection)
                return self._pooled
            except Exception:  # as the pool's ping: this one is replaced, the others pinged
                self.discard(lost=True)
        pooled = self._pooled = self.engine.raw_connection()
        return pooled

    def usable_now(self) -> PoolProxiedConnection | None:
        """The connection when it needs no ping (``recently_used``), else None; no I/O either way."""
        if self._pooled is None or not recently_used(self.engine, self._last_used):
            return None
        return self._pooled

    def worked(self) -> None:
        """Its transaction committed (or rolled back cleanly): kept, known good as of now."""
        self._last_used = time.monotonic()

    def discard(self, *, lost: bool) -> None:
        """Close it (PostgreSQL rolls back what it had begun) and give it back: the pool reconnects
        when it is next taken; ``lost``: the engine's other connections are pinged before their next use."""
        if self._pooled is not None:
            self._pooled.invalidate()
        if lost:
            mark_connections_suspect(self.engine)
        self.release()

    def release(self) -> None:
        """Back to the pool (an invalidated one reconnects when next taken)."""
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            pooled.close()


def mark_connections_suspect(engine: Engine) -> None:
    """A connection of ``engine`` was lost: ping every connection given back until now before its next
    use (as SQLAlchemy invalidates its pool when a statement meets a disconnect)."""
    _suspect_since[engine] = time.monotonic()
