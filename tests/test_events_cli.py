"""`xpud events --since/--limit` and folded repeats; the store's window of events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import IRIS, ControllerProcess
from xpud.admin_cli import fold, parse_since
from xpud.proto import admin_pb2 as apb
from xpud.validate import ValidationError


def test_since_reads_durations_and_local_times() -> None:
    assert parse_since("10m", 1000.0) == 400.0 and parse_since("1.5h", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-12-04 10:00", 0) == time.mktime(time.strptime("2026-12-04 10:00", "%Y-%m-%d %H:%M"))
    with pytest.raises(ValidationError, match="--since 'yesterday' is not understood"):
        parse_since("yesterday", 0)


def test_repeats_within_a_second_are_folded() -> None:
    e = [apb.Event(kind="NodeSuspect", subject="n1", message="late", time=t) for t in (10.0, 10.4, 10.9, 12.0)]
    other = apb.Event(kind="NodeLost", subject="n1", message="gone", time=12.1)
    assert [(x.time, n) for x, n in fold([*e, other])] == [(10.0, 3), (12.0, 1), (12.1, 1)]


def test_the_store_gives_a_window_of_events(tmp_path: Path) -> None:
    from xpud.controller.store import SqliteStore

    store = SqliteStore(tmp_path)
    for i in range(5):
        store.commit(events=[("Placed", f"d{i}", "on n1")], when=100.0 + i)
    assert [e.subject for e in store.events(limit=2, newest=True)] == ["d3", "d4"]
    assert [e.subject for e in store.events(since=102.0)] == ["d2", "d3", "d4"]
    assert [e.subject for e in store.events(limit=2)] == ["d0", "d1"]
    store.close()


def test_events_limit_since_and_bad_values(tmp_path: Path) -> None:
    c = ControllerProcess(str(tmp_path / "state"))
    try:
        for version in ("1", "2", "3"):
            assert c.admin("models", "push", str(IRIS), "--name", f"m{version}").returncode == 0
        last = c.admin("events", "--limit", "2")
        assert last.returncode == 0 and len(last.stdout.strip().splitlines()) == 2, last.stdout
        assert "m3" in last.stdout and "m1" not in last.stdout
        assert len(c.admin("events", "--since", "1h").stdout.strip().splitlines()) == 3
        assert c.admin("events", "--since", "2000-01-01").returncode == 0
        assert c.admin("events", "--since", "1s", "--limit", "1").returncode == 0
        for bad in (["--since", "soon"], ["--limit", "0"], ["--limit", "x"]):
            result = c.admin("events", *bad)
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        c.kill()
