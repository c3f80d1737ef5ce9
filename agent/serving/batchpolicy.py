"""The scheduling settings of one model version (Triton's dynamic_batching and queue policy), checked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """Scheduling settings of one model version (Triton's dynamic_batching and queue policy).

    ``default_priority`` 0 means the lowest priority level (``priority_levels``); with ``priority_levels``
    0 or 1 there is a single level and request priorities 0 and 1 are both accepted.
    ``default_timeout_s`` 0 means no queue timeout. With ``allow_timeout_override`` a request's own positive
    timeout applies when there is no default or when it is shorter than the default (it never lengthens it).
    """

    dynamic: bool = False
    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    priority_levels: int = 0
    default_priority: int = 0
    max_queue_size: int = 0
    default_timeout_s: float = 0.0
    allow_timeout_override: bool = False

    @property
    def levels(self) -> int:
        return max(1, self.priority_levels)

    def check(self, name: str) -> None:
        """Raise ValueError naming model ``name`` and what to fix when the settings contradict each other."""

        def bad(what: str) -> ValueError:
            return ValueError(f"model '{name}': {what}")

        if self.max_batch_size < 0:
            raise bad(f"max_batch_size {self.max_batch_size} is negative")
        for size in self.preferred_batch_sizes:
            if size < 1 or (self.max_batch_size > 0 and size > self.max_batch_size):
                raise bad(f"preferred batch size {size} is not in 1..max_batch_size ({self.max_batch_size})")
        if self.preferred_batch_sizes and self.max_batch_size == 0:
            raise bad("preferred_batch_sizes need max_batch_size > 0")
        if self.max_queue_delay_s < 0 or self.default_timeout_s < 0:
            raise bad("max_queue_delay_s and default_timeout_s must not be negative")
        if self.priority_levels < 0 or self.max_queue_size < 0:
            raise bad("priority_levels and max_queue_size must not be negative")
        if not 0 <= self.default_priority <= self.levels:
            raise bad(f"default_priority {self.default_priority} is not in 0..{self.levels}")
