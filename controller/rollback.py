"""The auto-rollback guard of a traffic change (`xpud traffic NAME 2=100 --auto-rollback-error-rate 0.05`).

`set_traffic` with a rate keeps, with the deployment, the weights it replaced (`DeploymentSpec.rollback_traffic`)
and the rate. The versions whose weight rose in that change are watched: when one's error rate over the router's
window (`stats.VersionStats`) is above the rate with at least `min_requests` answers in the window, the
controller puts the weights back and says why (a RollbackTriggered event). The next traffic change or deploy of
the deployment replaces the guard. Pure: the controller's loop calls `breach` and acts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpud.proto.status import InvalidArgument

from .core import DeploymentSpec
from .stats import Summary, VersionStats
from .traffic import Weights, weights

MIN_REQUESTS = 20  # answers of a watched version in the window before its error rate is judged
CHECK_INTERVAL_S = 1.0  # how often the controller looks


def check_rate(rate: float) -> None:
    """InvalidArgument unless ``rate`` is a fraction in (0, 1]."""
    if math.isnan(rate) or not 0 < rate <= 1:
        raise InvalidArgument(f"auto-rollback error rate {rate} must be a fraction within (0, 1], e.g. 0.05 "
                              "for 5% of requests failing")


def raised(before: Weights, after: Weights) -> tuple[str, ...]:
    """The versions whose weight is higher in ``after`` than in ``before`` (a version new to it counts from 0)."""
    old = dict(before)
    return tuple(v for v, w in after if w > old.get(v, 0))


def watched(spec: DeploymentSpec) -> tuple[str, ...]:
    """The versions a deployment's guard watches (none: no guard)."""
    if not spec.auto_rollback_error_rate or not spec.rollback_traffic:
        return ()
    return raised(spec.rollback_traffic, weights(spec))


@dataclass(frozen=True)
class Breach:
    version: str
    summary: Summary
    threshold: float

    def message(self, window_s: float, restored: Weights) -> str:
        back = " ".join(f"{v}={w}" for v, w in restored)
        return (f"version {self.version}: error rate {self.summary.error_rate:.3f} over {self.summary.requests} "
                f"requests in the last {window_s:g} s is above {self.threshold:g}; traffic back to {back}")


def breach(spec: DeploymentSpec, stats: VersionStats, min_requests: int = MIN_REQUESTS) -> Breach | None:
    """The first watched version of ``spec`` that fails too often now, if any."""
    for version in watched(spec):
        summary = stats.summary(spec.name, version)
        if summary.requests >= min_requests and summary.error_rate > spec.auto_rollback_error_rate:
            return Breach(version, summary, spec.auto_rollback_error_rate)
    return None
