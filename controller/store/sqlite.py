"""The SQLite `StateStore`: ``state.db`` (WAL mode) in a directory (0700) beside ``lock`` (an exclusive flock
holding the pid of the controller that runs on it). Every write is committed (``synchronous=FULL``) before its
method returns. One connection, meant to be used from one thread (the controller's store thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xpud.controller.core import DeploymentSpec, Replica, Rollout

from .base import (
    Conflict,
    Event,
    EventRecord,
    ModelRecord,
    NodeRecord,
    ProfileRecord,
    StoreError,
    TensorSpec,
    TokenRecord,
)
from .lock import StateLock

__all__ = ["MIGRATIONS", "SqliteStore"]

DB_NAME, LOCK_NAME = "state.db", "lock"
BUSY_TIMEOUT_MS = 5000
# Multi-row statements: "{rows}" becomes one "(?, ...)" per row (see _write_rows).
_PLACE_SQL = "INSERT INTO placement (deployment, idx, node, device, memory) VALUES {rows}"
_UNPLACE_SQL = "DELETE FROM placement WHERE (deployment, idx) IN (VALUES {rows})"
_GENERATION_SQL = ("INSERT INTO generations (node, generation) VALUES {rows} "
                   "ON CONFLICT (node) DO UPDATE SET generation = max(generation, excluded.generation)")
_DEPLOYMENT_SQL = ("INSERT INTO deployments (name, spec) VALUES {rows} "
                   "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec")
_NODE_SQL = ("INSERT INTO nodes (name, labels, zone, info) VALUES {rows} ON CONFLICT (name) DO UPDATE "
             "SET labels = excluded.labels, zone = excluded.zone, info = excluded.info")
_PROFILE_COLS = "model, version, device_model, memory, requests, errors, ok, latency_s, busy_s"
_PROFILE_SQL = (f"INSERT INTO profiles ({_PROFILE_COLS}) VALUES {{rows}} ON CONFLICT (model, version, device_model) "
                "DO UPDATE SET memory = excluded.memory, requests = excluded.requests, errors = excluded.errors, "
                "ok = excluded.ok, latency_s = excluded.latency_s, busy_s = excluded.busy_s")
_EVENT_SQL = "INSERT INTO events (kind, subject, message, time, actor) VALUES {rows}"
# Bound parameters per statement: SQLite's limit (32766 since 3.32, 999 before).
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _placement_rows(placement: Mapping[str, Sequence[Replica]]) -> dict[tuple[str, int], tuple[Any, ...]]:
    """The placement table's rows by key (deployment, replica index)."""
    return {(r.deployment, r.index): (r.deployment, r.index, r.node, r.device, r.memory)
            for reps in placement.values() for r in reps}


def _write_rows(c: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Run `sql` over `rows` with as many rows per statement as SQLite takes; returns the last rowid.

    Not `executemany`: each of its steps gives the GIL up and waits for a busy event loop to hand it back."""
    last = 0
    if rows:
        width = len(rows[0])
        per = max(1, _MAX_VARIABLES // width)
        one = "(" + ", ".join("?" * width) + ")"
        for i in range(0, len(rows), per):
            part = rows[i : i + per]
            statement = sql.format(rows=", ".join([one] * len(part)))
            last = c.execute(statement, [v for row in part for v in row]).lastrowid or 0
    return last

# Schema migrations: step i brings the database from version i to i + 1. To change the schema, append a step
# (never edit a released one); a database at a version above len(MIGRATIONS) comes from a newer controller.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE models (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL, "
        "digest TEXT NOT NULL, size INTEGER NOT NULL, filename TEXT NOT NULL, created REAL NOT NULL, "
        "UNIQUE (name, version))",
        "CREATE TABLE deployments (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, "
        "spec TEXT NOT NULL)",
        "CREATE TABLE placement (deployment TEXT NOT NULL, idx INTEGER NOT NULL, node TEXT NOT NULL, "
        "device TEXT NOT NULL, memory INTEGER NOT NULL, PRIMARY KEY (deployment, idx))",
        "CREATE TABLE nodes (name TEXT PRIMARY KEY, labels TEXT NOT NULL, zone TEXT NOT NULL, "
        "cordoned INTEGER NOT NULL DEFAULT 0, info TEXT NOT NULL, last_seen REAL)",
        "CREATE TABLE generations (node TEXT PRIMARY KEY, generation INTEGER NOT NULL)",
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, subject TEXT NOT NULL, "
        "message TEXT NOT NULL, time REAL NOT NULL)",
    ),
    # 2: a model's inputs and outputs as found when it was pushed (JSON; '' for rows recorded before)
    ("ALTER TABLE models ADD COLUMN io TEXT NOT NULL DEFAULT ''",),
    # 3: API tokens (hashed, see controller/tokens.py) and who caused an event ('' for rows recorded before)
    ("CREATE TABLE tokens (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, role TEXT NOT NULL, salt BLOB NOT NULL, "
     "hash BLOB NOT NULL, created REAL NOT NULL, creator TEXT NOT NULL)",
     "ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT ''"),
    # 4: what the router measured per model version and device model (placement profiles, controller/profiles.py)
    ("CREATE TABLE profiles (model TEXT NOT NULL, version TEXT NOT NULL, device_model TEXT NOT NULL, "
     "memory INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, ok INTEGER NOT NULL, "
     "latency_s REAL NOT NULL, busy_s REAL NOT NULL, PRIMARY KEY (model, version, device_model))",),
)


def _io_to_json(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str:
    def one(t: TensorSpec) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "dim_names": list(t.dim_names)}

    return json.dumps({"inputs": [one(t) for t in inputs], "outputs": [one(t) for t in outputs]}, sort_keys=True)


def _io_from_json(text: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if not text:
        return (), ()
    data = json.loads(text)

    def specs(key: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]),
                                tuple(str(n) for n in t.get("dim_names", ()))) for t in data.get(key, ()))

    return specs("inputs"), specs("outputs")


def _model_record(row: Sequence[Any]) -> ModelRecord:
    """A models row (`SqliteStore._MODEL_COLS`) as a record."""
    inputs, outputs = _io_from_json(row[6])
    name, version, digest, size, filename, created = row[:6]
    return ModelRecord(str(name), str(version), str(digest), int(size), str(filename), float(created), inputs, outputs)


def _spec_to_json(spec: DeploymentSpec) -> str:
    data = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    data["labels"] = dict(spec.labels)
    data["rollout"] = dataclasses.asdict(spec.rollout) if spec.rollout is not None else None
    return json.dumps(data, sort_keys=True)


def _spec_from_json(text: str) -> DeploymentSpec:
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(DeploymentSpec)}
    for key in ("traffic", "rollback_traffic"):  # JSON keeps the pairs as lists
        if key in data:
            data[key] = tuple((str(v), int(w)) for v, w in data[key])
    if data.get("rollout") is not None:
        fields = {f.name for f in dataclasses.fields(Rollout)}
        rollout = {k: v for k, v in data["rollout"].items() if k in fields}
        data["rollout"] = Rollout(**{**rollout, "updated": tuple(rollout.get("updated", ()))})
    if "previous" in data:
        data["previous"] = tuple(data["previous"])
    return DeploymentSpec(**{k: v for k, v in data.items() if k in known})


def _int_version(version: str) -> int | None:
    return int(version) if version.isascii() and version.isdigit() else None


class SqliteStore:
    """A `StateStore` in `directory` (created 0700): the database `db_name` and the lock."""

    def __init__(self, directory: Path, db_name: str = DB_NAME) -> None:
        self.state_dir = Path(directory)
        self.db_path = self.state_dir / db_name
        self._conn: sqlite3.Connection | None = None
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state directory {self.state_dir}: {e}") from e
        self._lock: StateLock | None = StateLock(self.state_dir / LOCK_NAME, f"state directory {self.state_dir}")
        try:
            self._open_db()
        except BaseException:
            self.close()
            raise

    def _open_db(self) -> None:
        try:
            self._conn = conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"state database {self.db_path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            self._migrate()
        except sqlite3.Error as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError(f"state database {self.db_path} is locked by another process: {e}") from e
            raise StoreError(
                f"state database {self.db_path} is unreadable or corrupt ({e}); stop the controller, move the file "
                f"(and any {DB_NAME}-wal/-shm beside it) aside or restore it from a backup, then start again "
                "(an empty state is created)"
            ) from e

    def _migrate(self) -> None:
        conn = self._db
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            msg = f"has schema version {current}, newer than this controller's {len(MIGRATIONS)}; run a newer one"
            raise StoreError(f"state database {self.db_path} {msg}")
        for version in range(current, len(MIGRATIONS)):  # the migration hook
            with self._tx(wrap=False) as c:
                for statement in MIGRATIONS[version]:
                    c.execute(statement)
                c.execute("DELETE FROM schema_version")
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.state_dir} is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, wrap: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) when the block ends, rolled back on an error."""
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if not wrap:
                raise
            raise (Conflict if isinstance(e, sqlite3.IntegrityError) else StoreError)(f"{self.db_path}: {e}") from e

    # ---- models
    def add_model(self, name: str, version: str | None, digest: str, size: int, filename: str,
                  inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = ()) -> ModelRecord:
        """Record a pushed model version (None: the next integer version) with its inputs and outputs. Idempotent
        for the same bytes; the artifact is the caller's to have stored first."""
        if version is not None and not version:
            raise StoreError("a model version must not be empty")
        with self._tx() as c:
            if version is None:
                versions = [v for (v,) in c.execute("SELECT version FROM models WHERE name = ?", (name,))]
                ints = [n for n in map(_int_version, versions) if n is not None]
                version = str(max(ints, default=0) + 1)
            else:
                existing = self._model_row(c, name, version)
                if existing is not None:
                    if existing.digest == digest and existing.size == size:
                        return existing
                    raise Conflict(f"model {name} version {version} exists with other content; push a new version")
            record = ModelRecord(name, version, digest, size, filename, time.time(), tuple(inputs), tuple(outputs))
            sql = f"INSERT INTO models ({self._MODEL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            c.execute(sql, (name, version, digest, size, filename, record.created, _io_to_json(inputs, outputs)))
        return record

    _MODEL_COLS = "name, version, digest, size, filename, created, io"

    def set_model_io(self, name: str, version: str, inputs: Sequence[TensorSpec],
                     outputs: Sequence[TensorSpec]) -> None:
        with self._tx() as c:
            c.execute("UPDATE models SET io = ? WHERE name = ? AND version = ?",
                      (_io_to_json(inputs, outputs), name, version))

    def _model_row(self, c: sqlite3.Connection, name: str, version: str) -> ModelRecord | None:
        row = c.execute(f"SELECT {self._MODEL_COLS} FROM models WHERE name = ? AND version = ?", (name, version))
        found = row.fetchone()
        return _model_record(found) if found else None

    def models(self) -> list[ModelRecord]:
        rows = self._db.execute(f"SELECT {self._MODEL_COLS} FROM models ORDER BY name, seq")
        return [_model_record(r) for r in rows]

    def model(self, name: str, version: str | None = None) -> ModelRecord | None:
        """One version of a model; None: the latest (highest integer version, else the latest created)."""
        if version is not None:
            return self._model_row(self._db, name, version)
        sql = f"SELECT {self._MODEL_COLS} FROM models WHERE name = ? ORDER BY seq"
        rows = [_model_record(r) for r in self._db.execute(sql, (name,))]
        numbered = [(n, r) for r in rows if (n := _int_version(r.version)) is not None]
        return max(numbered, key=lambda nr: nr[0])[1] if numbered else (rows[-1] if rows else None)

    # ---- deployments
    def create_deployment(self, spec: DeploymentSpec) -> None:
        try:
            with self._tx() as c:
                c.execute("INSERT INTO deployments (name, spec) VALUES (?, ?)", (spec.name, _spec_to_json(spec)))
        except Conflict:
            raise Conflict(f"deployment {spec.name} already exists") from None

    def put_deployment(self, spec: DeploymentSpec) -> None:
        """Create or replace a deployment (a replaced one keeps its place in creation order)."""
        self.commit(deployments=[spec])

    def delete_deployment(self, name: str) -> bool:
        """Delete a deployment and its placement rows; False if there was none."""
        with self._tx() as c:
            deleted = c.execute("DELETE FROM deployments WHERE name = ?", (name,)).rowcount
            c.execute("DELETE FROM placement WHERE deployment = ?", (name,))
        return deleted > 0

    def deployments(self) -> list[DeploymentSpec]:
        return [_spec_from_json(s) for (s,) in self._db.execute("SELECT spec FROM deployments ORDER BY seq")]

    # ---- placement in force
    def set_placement(self, replicas: Mapping[str, Sequence[Replica]]) -> None:
        """Replace the whole placement table in one transaction."""
        self.commit(placement=replicas)

    def commit(self, *, deployments: Sequence[DeploymentSpec] = (), deleted: Sequence[str] = (),
               placement: Mapping[str, Sequence[Replica]] | None = None,
               replacing: Mapping[str, Sequence[Replica]] | None = None,
               generations: Mapping[str, int] | None = None, nodes: Sequence[NodeRecord] = (),
               cordons: Mapping[str, bool] | None = None,
               events: Sequence[Event] = (), when: float = 0.0, actor: str = "") -> list[EventRecord]:
        """`StateStore.commit`: one transaction, one fsync. Only the placement rows that differ from `replacing`
        are written."""
        rows, held = _placement_rows(placement or {}), _placement_rows(replacing or {})
        if len(rows) != sum(len(reps) for reps in (placement or {}).values()):
            raise Conflict("a placement with the same replica index twice")
        reported = [(n.name, json.dumps(dict(n.labels), sort_keys=True), n.zone,
                     json.dumps(dict(n.info), sort_keys=True)) for n in nodes]
        with self._tx() as c:
            for name in deleted:
                c.execute("DELETE FROM deployments WHERE name = ?", (name,))
                c.execute("DELETE FROM placement WHERE deployment = ?", (name,))
            _write_rows(c, _DEPLOYMENT_SQL, [(spec.name, _spec_to_json(spec)) for spec in deployments])
            _write_rows(c, _NODE_SQL, reported)
            for name, cordoned in (cordons or {}).items():
                c.execute("UPDATE nodes SET cordoned = ? WHERE name = ?", (int(cordoned), name))
            if placement is not None:
                if replacing is None:
                    c.execute("DELETE FROM placement")
                else:
                    _write_rows(c, _UNPLACE_SQL, [key for key, row in held.items() if rows.get(key) != row])
                _write_rows(c, _PLACE_SQL, [row for key, row in rows.items() if held.get(key) != row])
            _write_rows(c, _GENERATION_SQL, [(node, int(g)) for node, g in (generations or {}).items()])
            last = _write_rows(c, _EVENT_SQL, [(kind, subject, message, when, actor)
                                               for kind, subject, message in events])
        # one statement per chunk: consecutive sequence numbers (AUTOINCREMENT, our write transaction alone)
        first = last - len(events) + 1
        return [EventRecord(first + i, kind, subject, message, when, actor)
                for i, (kind, subject, message) in enumerate(events)]

    def placement(self) -> dict[str, list[Replica]]:
        """Placed replicas per deployment, by replica index (deployments without replicas are absent)."""
        result: dict[str, list[Replica]] = {}
        rows = self._db.execute("SELECT deployment, idx, node, device, memory FROM placement ORDER BY deployment, idx")
        for row in rows:
            result.setdefault(row[0], []).append(Replica(*row))
        return result

    # ---- nodes
    def upsert_node(self, name: str, labels: Mapping[str, str], zone: str, info: Mapping[str, Any]) -> None:
        """Record what a node reported; keeps its cordon and last_seen."""
        self.commit(nodes=[NodeRecord(name, labels, zone, info=info)])

    def set_cordon(self, name: str, cordoned: bool) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE nodes SET cordoned = ? WHERE name = ?", (int(cordoned), name)).rowcount > 0

    def touch_node(self, name: str, when: float) -> None:
        """Set a known node's last_seen (an unknown node is ignored)."""
        with self._tx() as c:
            c.execute("UPDATE nodes SET last_seen = ? WHERE name = ?", (when, name))

    def nodes(self) -> list[NodeRecord]:
        rows = self._db.execute("SELECT name, labels, zone, cordoned, info, last_seen FROM nodes ORDER BY name")
        return [NodeRecord(n, json.loads(lb), z, bool(c), json.loads(i), seen) for n, lb, z, c, i, seen in rows]

    def set_generation(self, node: str, generation: int) -> None:
        """Record a node's desired-state generation; it never goes backwards (a lower value is ignored)."""
        self.commit(generations={node: generation})

    def set_generations(self, generations: Mapping[str, int]) -> None:
        """Several nodes' generations in one transaction (one fsync for a whole push round)."""
        self.commit(generations=generations)

    def generations(self) -> dict[str, int]:
        return {node: gen for node, gen in self._db.execute("SELECT node, generation FROM generations")}

    # ---- placement profiles
    def profiles(self) -> list[ProfileRecord]:
        sql = f"SELECT {_PROFILE_COLS} FROM profiles ORDER BY model, version, device_model"
        return [ProfileRecord(str(m), str(v), str(d), int(mem), int(n), int(e), int(ok), float(lat), float(busy))
                for m, v, d, mem, n, e, ok, lat, busy in self._db.execute(sql)]

    def put_profiles(self, records: Sequence[ProfileRecord]) -> None:
        with self._tx() as c:
            _write_rows(c, _PROFILE_SQL, [(r.model, r.version, r.device_model, r.memory, r.requests, r.errors, r.ok,
                                           r.latency_s, r.busy_s) for r in records])

    # ---- events
    def add_event(self, kind: str, subject: str, message: str, when: float, actor: str = "") -> EventRecord:
        return self.commit(events=[(kind, subject, message)], when=when, actor=actor)[0]

    def events(self, after_seq: int = 0, limit: int = 1000, since: float = 0.0,
               newest: bool = False) -> list[EventRecord]:
        order = "DESC" if newest else "ASC"
        sql = f"SELECT seq, kind, subject, message, time, actor FROM events WHERE seq > ? AND time >= ? " \
              f"ORDER BY seq {order} LIMIT ?"
        rows = [EventRecord(*r) for r in self._db.execute(sql, (after_seq, since, limit))]
        return rows[::-1] if newest else rows

    # ---- tokens
    _TOKEN_COLS = "name, id, role, salt, hash, created, creator"

    def tokens(self) -> list[TokenRecord]:
        return [TokenRecord(*r) for r in self._db.execute(f"SELECT {self._TOKEN_COLS} FROM tokens ORDER BY name")]

    def add_token(self, record: TokenRecord, event: Event | None = None, when: float = 0.0) -> list[EventRecord]:
        """Store a token (Conflict if its name is taken), with its event in the same transaction."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM tokens WHERE name = ?", (record.name,)).fetchone():
                raise Conflict(f"a token named {record.name!r} exists: revoke it first or choose another name")
            c.execute(f"INSERT INTO tokens ({self._TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (record.name, record.id, record.role, record.salt, record.hash, record.created,
                       record.creator))
            return self._event(c, event, when, record.creator)

    def delete_token(self, name: str, event: Event | None = None, when: float = 0.0,
                     actor: str = "") -> list[EventRecord] | None:
        """Remove a token; None if there is none of that name. Its event is written in the same transaction."""
        with self._tx() as c:
            if c.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                return None
            return self._event(c, event, when, actor)

    @staticmethod
    def _event(c: sqlite3.Connection, event: Event | None, when: float, actor: str) -> list[EventRecord]:
        if event is None:
            return []
        seq = _write_rows(c, _EVENT_SQL, [(*event, when, actor)])
        return [EventRecord(seq, *event, when, actor)]
