"""A deployment's traffic split across model versions: weights, replicas per version, and each request's version.

`DeploymentSpec.traffic` lists (version, weight) pairs, weights being percentages that sum to 100; empty means
the deployment's one version at 100. Replicas go to versions in proportion to their weights, at least one each,
by replica index (the lowest indexes to the first version). The router picks a request's version (`choose`)
before its routing policy picks a replica of that version: a pinned OIP ``model_version`` wins, else the
``xpud-key`` request parameter hashed onto the weights (the same key, the same version while weights hold),
else a weighted random draw.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpud.proto.status import InvalidArgument, NotFound

from .core import DeploymentSpec

KEY_PARAMETER = "xpud-key"  # a request parameter: requests with the same key go to the same version
Weights = tuple[tuple[str, int], ...]


def weights(spec: DeploymentSpec) -> Weights:
    """The deployment's (version, weight) pairs; its one version at 100 when no split is set."""
    return spec.traffic or ((spec.version, 100),)


def normalized(pairs: Sequence[tuple[str, int]]) -> Weights:
    """Checked weights (InvalidArgument: a bad or repeated version, a weight outside 0..100, a sum other than 100),
    without zero weights, in version order (whole numbers by value)."""
    seen: dict[str, int] = {}
    for version, weight in pairs:
        if not version:
            raise InvalidArgument("each weight needs a version: VERSION=PERCENT, e.g. 1=90 2=10")
        if version in seen:
            raise InvalidArgument(f"version {version!r} is given twice")
        if not 0 <= weight <= 100:
            raise InvalidArgument(f"weight {weight} of version {version!r} must be a percentage, 0..100")
        seen[version] = weight
    total = sum(seen.values())
    if total != 100:
        raise InvalidArgument(f"weights must sum to 100, not {total} ({' '.join(f'{v}={w}' for v, w in pairs)})")
    return tuple(sorted(((v, w) for v, w in seen.items() if w), key=lambda p: _rank(p[0])))


def _rank(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def version_order(version: str) -> tuple[int, int, str]:
    """A sort key for versions: whole numbers by value, then the others by name."""
    return _rank(version)


def replica_counts(spec: DeploymentSpec) -> dict[str, int]:
    """Replicas per weighted version: in proportion (largest remainder), at least one each."""
    split = weights(spec)
    total = max(spec.replicas, len(split))
    counts = {v: max(1, total * w // 100) for v, w in split}
    order = sorted(split, key=lambda p: (-(total * p[1] % 100), _rank(p[0])))  # largest remainder first
    at = 0
    while sum(counts.values()) < total:
        counts[order[at % len(order)][0]] += 1
        at += 1
    while sum(counts.values()) > total:  # the minimum of one each took more than the share: the largest give back
        version = max(counts, key=lambda v: (counts[v], _rank(v)))
        counts[version] -= 1
    return counts


def replica_versions(spec: DeploymentSpec) -> list[str]:
    """Each replica index's version (the first version's replicas first)."""
    return [v for v, n in replica_counts(spec).items() for _ in range(n)]


@dataclass
class Split:
    """What the router holds per deployment with more than one version: cumulative weights for the draw."""

    versions: tuple[str, ...]
    bounds: tuple[int, ...]  # cumulative weights, the last being 100
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def of(cls, split: Weights) -> Split:
        bounds, total = [], 0
        for _, w in split:
            total += w
            bounds.append(total)
        return cls(tuple(v for v, _ in split), tuple(bounds))

    def draw(self, point: int) -> str:
        """The version whose cumulative range holds ``point`` (0..99)."""
        for version, bound in zip(self.versions, self.bounds, strict=True):
            if point < bound:
                return version
        return self.versions[-1]


def key_point(key: str) -> int:
    """A key's place in 0..99, the same in every process (not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


def _parameter(message: Any, name: str) -> str:
    parameters = getattr(message, "parameters", None)
    if parameters is None or name not in parameters:
        return ""
    p = parameters[name]
    kind = p.WhichOneof("parameter_choice")
    return str(getattr(p, kind)) if kind else ""


def choose(deployment: str, message: Any, split: Split | None, served: Mapping[str, Any]) -> str:
    """The version a request goes to: pinned (``model_version``; NOT_FOUND when the deployment neither weighs nor
    serves such a version), else by its key, else drawn by weight; "" with no split (any replica: the agent
    answers a pinned version itself)."""
    pinned = getattr(message, "model_version", "") or getattr(message, "version", "")
    if split is None:
        return ""
    if pinned:
        if pinned not in served and pinned not in split.versions:
            known = ", ".join(split.versions)
            raise NotFound(f"deployment {deployment!r} serves no version {pinned!r}; versions: {known}")
        return pinned
    key = _parameter(message, KEY_PARAMETER)
    return split.draw(key_point(key) if key else split.rng.randrange(100))
