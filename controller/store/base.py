"""What the controller persists, as an interface: the records, the errors, and `StateStore`.

The core calls a `StateStore` from one thread only (its store thread, `storethread.StoreThread`), and every
write is durable before the method returns. Model bytes are not in it: they live in an `ArtifactStore`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xpud.controller.core import DeploymentSpec, Replica

Event = tuple[str, str, str]  # kind, subject, message


class StoreError(Exception):
    """The state cannot be read or written (corrupt or locked database, I/O error, ...)."""


class Conflict(StoreError):
    """The write contradicts what is stored (an existing name, different bytes for a pushed version)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, as ONNX Runtime found it in the file."""

    name: str
    datatype: str  # FP32, INT64, ...
    shape: tuple[int, ...]  # -1: a dynamic dimension
    dim_names: tuple[str, ...] = ()  # per dimension: its symbolic name, "" if fixed or unnamed


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    digest: str  # sha256 hex of the artifact
    size: int  # bytes
    filename: str  # the name the file was pushed with ("model.onnx")
    created: float  # unix time
    inputs: tuple[TensorSpec, ...] = ()  # none for a model recorded before they were kept
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True)
class NodeRecord:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    cordoned: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)
    last_seen: float | None = None  # unix time of the last touch, None if never


@dataclass(frozen=True)
class EventRecord:
    seq: int
    kind: str
    subject: str
    message: str
    when: float
    actor: str = ""  # who caused it: "user:alice", "token:ci", "anonymous"; "" for the controller itself


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: its secret only as a salted scrypt hash (controller/tokens.py)."""

    name: str
    id: str  # the public part of the token, to find its row
    role: str
    salt: bytes
    hash: bytes
    created: float  # unix time
    creator: str  # the actor that created it


@dataclass(frozen=True)
class ProfileRecord:
    """What the router measured of one model version on one device model (controller/profiles.py)."""

    model: str
    version: str
    device_model: str
    memory: int  # bytes of one such device
    requests: int  # forwards that ended (errors among them)
    errors: int
    ok: int  # successful forwards (the throughput's count)
    latency_s: float  # EWMA of successful forwards' seconds
    busy_s: float  # seconds the replicas had a forward in flight, summed over replicas


class StateStore(Protocol):
    """The controller's durable state: deployments, placement, nodes, generations, models, events.

    A second implementation (etcd, say) is one module with a class like this and one entry in
    `xpud.controller.store.OPENERS`."""

    def deployments(self) -> list[DeploymentSpec]:
        """Every deployment, in creation order (a replaced one keeps its place)."""
        ...

    def placement(self) -> dict[str, list[Replica]]:
        """Placed replicas per deployment, by replica index (deployments without replicas are absent)."""
        ...

    def generations(self) -> dict[str, int]:
        """Each node's last desired-state generation."""
        ...

    def nodes(self) -> list[NodeRecord]:
        """Every node ever recorded, by name."""
        ...

    def models(self) -> list[ModelRecord]:
        """Every model version, by name then creation order."""
        ...

    def add_model(self, name: str, version: str | None, digest: str, size: int, filename: str,
                  inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = ()) -> ModelRecord:
        """Record a pushed model version (None: the next whole-number version) with the inputs and outputs found in
        it. The same bytes again: the record held; other bytes under a version held: `Conflict`."""
        ...

    def set_model_io(self, name: str, version: str, inputs: Sequence[TensorSpec],
                     outputs: Sequence[TensorSpec]) -> None:
        """Record the inputs and outputs of a model version stored before they were kept (the back-fill)."""
        ...

    def events(self, after_seq: int = 0, limit: int = 1000, since: float = 0.0,
               newest: bool = False) -> list[EventRecord]:
        """Events with a sequence number above `after_seq` and a time at or after `since`, oldest first, at most
        `limit`: the first ones, or with `newest` the last ones."""
        ...

    def tokens(self) -> list[TokenRecord]:
        """Every live API token, by name."""
        ...

    def add_token(self, record: TokenRecord, event: Event | None = None, when: float = 0.0) -> list[EventRecord]:
        """Store a token (Conflict if the name is taken) and its event in one transaction; the event written."""
        ...

    def delete_token(self, name: str, event: Event | None = None, when: float = 0.0,
                     actor: str = "") -> list[EventRecord] | None:
        """Remove a token and write its event; None if there is no token of that name."""
        ...

    def profiles(self) -> list[ProfileRecord]:
        """Every placement profile, by model, version, device model."""
        ...

    def put_profiles(self, records: Sequence[ProfileRecord]) -> None:
        """Create or replace these profiles (by model, version, device model) in one transaction."""
        ...

    def commit(self, *, deployments: Sequence[DeploymentSpec] = (), deleted: Sequence[str] = (),
               placement: Mapping[str, Sequence[Replica]] | None = None,
               replacing: Mapping[str, Sequence[Replica]] | None = None,
               generations: Mapping[str, int] | None = None, nodes: Sequence[NodeRecord] = (),
               cordons: Mapping[str, bool] | None = None,
               events: Sequence[Event] = (), when: float = 0.0, actor: str = "") -> list[EventRecord]:
        """Several writes in one transaction: deployments created or replaced, deployments `deleted` (with their
        placement), the placement (None: unchanged; with `replacing`, what is held now for the deployments given:
        other deployments' rows stay), generations (never backwards), what nodes reported (their cordon and
        last_seen are kept), nodes' `cordons`, and events at `when` caused by `actor`; returns the events
        written, numbered."""
        ...

    def close(self) -> None:
        """Release the store (idempotent)."""
        ...
