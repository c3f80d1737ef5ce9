"""The controller's store over real SQLite files: round trips, durability, locking, artifacts, corruption, URLs."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpud.controller.core import DeploymentSpec, Replica
from xpud.controller.store import (
    MIGRATIONS,
    ArtifactStore,
    Conflict,
    EventRecord,
    NodeRecord,
    SqliteStore,
    StoreError,
    StoreURLError,
    check_url,
    open_store,
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(state)
    yield s
    s.close()


def spec(name: str, **kw: object) -> DeploymentSpec:
    args: dict = {"model": "resnet", "version": "1", "replicas": 2, "memory_bytes": 1 << 20, **kw}
    return DeploymentSpec(name=name, **args)


@pytest.fixture
def artifacts(state: Path) -> ArtifactStore:
    return ArtifactStore(state / "artifacts")


def artifact(store: SqliteStore, data: bytes) -> tuple[str, int]:
    """A digest and size for `data`, as the artifact store gives them (the state store records, never checks)."""
    return hashlib.sha256(data).hexdigest(), len(data)


def test_layout_and_pragmas(store: SqliteStore, state: Path) -> None:
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "state.db").is_file()
    assert (state / "lock").read_text().strip() == str(os.getpid())
    with sqlite3.connect(state / "state.db") as other:  # journal_mode is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = store._db
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.schema_version() == len(MIGRATIONS)


def test_deployments_round_trip(store: SqliteStore) -> None:
    a = spec("a", labels={"tier": "gold", "rack": "r1"}, zone="eu-1", device="gpu", priority=5, strategy="spread")
    b = spec("b", max_batch_size=8)
    store.create_deployment(a)
    store.create_deployment(b)
    assert store.deployments() == [a, b]
    assert store.deployments()[0].labels == {"tier": "gold", "rack": "r1"}
    with pytest.raises(Conflict, match="already exists"):
        store.create_deployment(spec("a"))
    a2 = spec("a", replicas=5)
    store.put_deployment(a2)  # an update keeps creation order
    c = spec("c")
    store.put_deployment(c)  # an insert
    assert store.deployments() == [a2, b, c]
    assert store.delete_deployment("b") is True
    assert store.delete_deployment("b") is False
    assert [d.name for d in store.deployments()] == ["a", "c"]


def test_placement_round_trip(store: SqliteStore) -> None:
    store.create_deployment(spec("a"))
    placed = {
        "a": [Replica("a", 0, "n1", "nvidia:0", 100), Replica("a", 1, "n2", "nvidia:1", 100)],
        "b": [Replica("b", 0, "n1", "cpu:0", 50)],
    }
    store.set_placement(placed)
    assert store.placement() == placed
    store.set_placement({"b": [Replica("b", 0, "n3", "cpu:0", 50)]})  # replaces the whole table
    assert store.placement() == {"b": [Replica("b", 0, "n3", "cpu:0", 50)]}
    with pytest.raises(Conflict):  # a duplicate index: nothing of it is written
        store.set_placement({"b": [Replica("b", 0, "n1", "cpu:0", 1), Replica("b", 0, "n2", "cpu:0", 1)]})
    assert store.placement() == {"b": [Replica("b", 0, "n3", "cpu:0", 50)]}
    store.set_placement({"a": [Replica("a", 0, "n1", "sim:0", 1)], "b": []})
    store.delete_deployment("a")  # takes its placement along
    assert store.placement() == {}


def test_nodes_and_generations(store: SqliteStore) -> None:
    info = {"devices": [{"id": "nvidia:0", "memory_total": 80 << 30}], "agent": "0.1.0"}
    store.upsert_node("n1", {"gpu": "h100"}, "eu-1", info)
    store.upsert_node("n0", {}, "", {})
    assert store.nodes() == [
        NodeRecord("n0", {}, "", False, {}, None),
        NodeRecord("n1", {"gpu": "h100"}, "eu-1", False, info, None),
    ]
    assert store.set_cordon("n1", True) is True
    assert store.set_cordon("ghost", True) is False
    store.touch_node("n1", 1234.5)
    store.touch_node("ghost", 1.0)  # ignored
    store.upsert_node("n1", {"gpu": "h200"}, "eu-2", {"devices": []})  # keeps cordon and last_seen
    assert store.nodes()[1] == NodeRecord("n1", {"gpu": "h200"}, "eu-2", True, {"devices": []}, 1234.5)
    assert [n.name for n in store.nodes()] == ["n0", "n1"]

    store.set_generation("n1", 3)
    store.set_generation("n0", 1)
    store.set_generation("n1", 2)  # never backwards
    assert store.generations() == {"n0": 1, "n1": 3}
    store.set_generation("n1", 4)
    assert store.generations()["n1"] == 4


def test_events(store: SqliteStore) -> None:
    recs = [store.add_event("placed", f"d{i}", f"message {i}", 100.0 + i) for i in range(5)]
    assert [r.seq for r in recs] == sorted({r.seq for r in recs})
    assert recs[0] == EventRecord(recs[0].seq, "placed", "d0", "message 0", 100.0)
    assert store.events() == recs
    assert store.events(after_seq=recs[2].seq) == recs[3:]
    assert store.events(limit=2) == recs[:2]
    assert store.events(after_seq=recs[-1].seq) == []


def test_reopen_keeps_everything(state: Path) -> None:
    s = SqliteStore(state)
    digest, size = artifact(s, b"onnx bytes")
    model = s.add_model("resnet", None, digest, size, "model.onnx")
    s.create_deployment(spec("a", labels={"x": "y"}))
    s.set_placement({"a": [Replica("a", 0, "n1", "sim:0", 7)]})
    s.upsert_node("n1", {"k": "v"}, "z", {"devices": [1, 2]})
    s.set_cordon("n1", True)
    s.touch_node("n1", 99.0)
    s.set_generation("n1", 41)
    ev = s.add_event("k", "s", "m", 1.0)
    snapshot = (s.models(), s.deployments(), s.placement(), s.nodes(), s.generations(), s.events())
    s.close()
    s.close()  # idempotent

    with SqliteStore(state) as again:
        assert (again.models(), again.deployments(), again.placement()) == snapshot[:3]
        assert (again.nodes(), again.generations(), again.events()) == snapshot[3:]
        assert again.model("resnet") == model
        assert again.add_event("k", "s", "m", 2.0).seq > ev.seq
    with pytest.raises(StoreError, match="closed"):
        again.deployments()


def test_second_store_on_same_dir_refused(store: SqliteStore, state: Path) -> None:
    with pytest.raises(StoreError, match=rf"in use by another controller \(pid {os.getpid()}\)") as info:
        SqliteStore(state)
    assert str(state) in str(info.value)
    store.close()
    SqliteStore(state).close()  # free again once the first is closed


def test_writes_survive_sigkill(state: Path) -> None:
    code = f"""
import os, signal
from pathlib import Path
from xpud.controller.core import DeploymentSpec
from xpud.controller.store import SqliteStore
s = SqliteStore(Path({str(state)!r}))
s.create_deployment(DeploymentSpec("d", "m", "1", 3, 1024, labels={{"a": "b"}}))
s.add_event("created", "d", "deployment created", 12.5)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with SqliteStore(state) as s:  # the dead process's lock is gone with it
        assert s.deployments() == [DeploymentSpec("d", "m", "1", 3, 1024, labels={"a": "b"})]
        assert [(e.kind, e.subject, e.message, e.when) for e in s.events()] == [
            ("created", "d", "deployment created", 12.5)
        ]


def test_artifacts(artifacts: ArtifactStore, state: Path) -> None:
    assert stat.S_IMODE((state / "artifacts").stat().st_mode) == 0o700
    data = os.urandom(300_000)
    digest, size = artifacts.put(data[i : i + 65536] for i in range(0, len(data), 65536))
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    path = artifacts.path(digest)
    assert path == state / "artifacts" / digest and path.read_bytes() == data
    assert artifacts.put([data]) == (digest, size)  # the same bytes are stored once
    assert sorted(p.name for p in (state / "artifacts").iterdir()) == [digest]
    assert artifacts.put([]) == (hashlib.sha256(b"").hexdigest(), 0)
    assert artifacts.path("0" * 64) is None
    assert artifacts.path("../state.db") is None


def test_failed_artifact_write_leaves_no_temp_file(artifacts: ArtifactStore, state: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        yield b"b" * 1000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        artifacts.put(chunks())
    assert list((state / "artifacts").iterdir()) == []


def test_stale_temp_files_removed_on_open(state: Path) -> None:
    ArtifactStore(state / "artifacts")
    (state / "artifacts" / ".tmp-crashed").write_bytes(b"half")
    (state / "artifacts" / ".tmp-push-x").write_bytes(b"half")
    ArtifactStore(state / "artifacts")
    assert list((state / "artifacts").iterdir()) == []


def test_model_versions(store: SqliteStore) -> None:
    d1, s1 = artifact(store, b"first")
    d2, s2 = artifact(store, b"second")
    v1 = store.add_model("resnet", None, d1, s1, "model.onnx")
    v2 = store.add_model("resnet", None, d2, s2, "model.onnx")
    assert (v1.version, v2.version) == ("1", "2")
    assert (v1.digest, v1.size, v1.filename) == (d1, s1, "model.onnx")
    assert store.add_model("resnet", "1", d1, s1, "other.onnx") == v1  # identical bytes: a no-op
    with pytest.raises(Conflict, match="resnet version 1"):
        store.add_model("resnet", "1", d2, s2, "model.onnx")
    v10 = store.add_model("resnet", "10", d1, s1, "model.onnx")
    assert store.add_model("resnet", None, d2, s2, "model.onnx").version == "11"
    assert store.model("resnet", "10") == v10
    assert store.model("resnet").version == "11"  # highest integer
    assert store.model("resnet", "3") is None and store.model("nope") is None

    store.add_model("bert", "beta", d1, s1, "b.onnx")
    store.add_model("bert", "alpha", d2, s2, "b.onnx")
    assert store.model("bert").version == "alpha"  # no integer version: the latest created
    assert [(m.name, m.version) for m in store.models()] == [
        ("bert", "beta"),
        ("bert", "alpha"),
        ("resnet", "1"),
        ("resnet", "2"),
        ("resnet", "10"),
        ("resnet", "11"),
    ]


def test_corrupt_database(state: Path) -> None:
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database at all; " * 512)
    with pytest.raises(StoreError, match="corrupt") as info:
        SqliteStore(state)
    message = str(info.value)
    assert str(state / "state.db") in message and "backup" in message
    (state / "state.db").unlink()  # moved aside: a fresh state opens (the lock was released)
    SqliteStore(state).close()


def test_newer_schema_refused(state: Path) -> None:
    SqliteStore(state).close()
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(state)


def test_commit_writes_only_the_placement_rows_that_differ_and_numbers_events_in_order(store: SqliteStore) -> None:
    before = {"a": [Replica("a", 0, "n1", "gpu:0", 10), Replica("a", 1, "n2", "gpu:0", 10)],
              "b": [Replica("b", 0, "n3", "cpu:0", 5)]}
    store.set_placement(before)
    after = {"a": [Replica("a", 0, "n1", "gpu:0", 10), Replica("a", 1, "n4", "gpu:1", 10)],  # 1 moved, b gone
             "c": [Replica("c", 0, "n5", "cpu:0", 7)]}
    records = store.commit(placement=after, replacing=before, events=[("Moved", "a", "1"), ("Placed", "c", "0")],
                           when=2.0)
    assert store.placement() == after
    moved = [Replica("c", 0, "n6", "cpu:0", 7)]
    store.commit(placement={"c": moved}, replacing={"c": after["c"]})  # one deployment given: the others stay
    assert store.placement() == {**after, "c": moved}
    after["c"] = moved
    assert [(e.seq, e.kind) for e in store.events()] == [(r.seq, r.kind) for r in records]
    assert records[1].seq == records[0].seq + 1
    many = {f"n{i}": i for i in range(20_000)}  # more rows than one statement takes
    store.commit(generations=many, events=[("E", str(i), "") for i in range(9_000)], when=3.0)
    assert store.generations() == many
    seqs = [e.seq for e in store.events(records[1].seq, 10_000)]
    assert len(seqs) == 9_000 and seqs == list(range(seqs[0], seqs[0] + 9_000))


def test_commit_deletes_deployments_and_sets_cordons_in_its_transaction(store: SqliteStore) -> None:
    store.create_deployment(spec("a"))
    store.create_deployment(spec("b"))
    store.set_placement({"a": [Replica("a", 0, "n1", "cpu:0", 1)], "b": [Replica("b", 0, "n1", "cpu:0", 1)]})
    store.upsert_node("n1", {}, "", {})
    records = store.commit(deleted=["a"], cordons={"n1": True, "ghost": True},
                           events=[("DeploymentDeleted", "a", "")], when=1.0)
    assert [d.name for d in store.deployments()] == ["b"] and list(store.placement()) == ["b"]
    assert [n.cordoned for n in store.nodes()] == [True] and [e.kind for e in records] == ["DeploymentDeleted"]
    with pytest.raises(Conflict):  # nothing of a failed transaction is written
        store.commit(deleted=["b"], placement={"c": [Replica("c", 0, "n1", "cpu:0", 1)] * 2})
    assert [d.name for d in store.deployments()] == ["b"]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("sqlite:///{tmp}/state.db", None),
        ("sqlite:///{tmp}/other/custom.db", None),
        ("etcd://127.0.0.1:2379", "unknown store 'etcd://127.0.0.1:2379': expected a URL starting with sqlite://"),
        ("/var/lib/xpud", "unknown store '/var/lib/xpud'"),
        ("sqlite://host/state.db", "expected sqlite:///PATH/TO/FILE.db"),
        ("sqlite:///{tmp}/", "expected sqlite:///PATH/TO/FILE.db"),
        ("sqlite:///{tmp}/s.db?mode=ro", "expected sqlite:///PATH/TO/FILE.db"),
        ("sqlite:", "expected sqlite:///PATH/TO/FILE.db"),
    ],
)
def test_store_urls(tmp_path: Path, url: str, error: str | None) -> None:
    text = url.format(tmp=tmp_path)
    if error is not None:
        with pytest.raises(StoreURLError, match=re.escape(error)):
            check_url(text)
        return
    opened = open_store(text)
    try:
        opened.commit(events=[("E", "s", "m")])
        assert Path(check_url(text).path).is_file() and [e.kind for e in opened.events()] == ["E"]
    finally:
        opened.close()
