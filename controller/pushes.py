"""Pushing each node its share of the placement: a DesiredState with a higher generation on its stream."""

from __future__ import annotations

from collections.abc import Mapping

from xpud.proto import link_pb2 as lpb

from .core import NODE_LOST
from .pool import Pool
from .shares import Share, Shares


def reachable(pool: Pool, name: str) -> bool:
    """Whether a node can be sent its share now: connected, and not lost."""
    node = pool.nodes.get(name)
    return node is not None and node.session is not None and node.state != NODE_LOST


def push(pool: Pool, shares: Shares, pushes: Mapping[str, Share], generations: Mapping[str, int],
         held: dict[str, int]) -> None:
    """Send each node in `pushes` its share at its new generation (recorded in `held` and `shares` as sent)."""
    for name, share in pushes.items():
        held[name] = generations[name]
        shares.mark_sent(name, share)
        node = pool.nodes[name]
        if node.session is not None:
            node.session.push(lpb.ControllerMessage(desired=lpb.DesiredState(
                generation=generations[name], assignments=assignments(share))))


def assignments(share: Share) -> list[lpb.ModelAssignment]:
    return [lpb.ModelAssignment(deployment=a.deployment, model=a.model, version=a.version, digest=a.digest,
                                size_bytes=a.size, devices=a.devices, max_batch_size=a.max_batch_size,
                                priority=a.priority) for a in share]
