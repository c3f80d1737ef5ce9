from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import AgentProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU and driver (skipped elsewhere)")


@pytest.fixture
def start_agent() -> Iterator[type[AgentProcess]]:
    """Start real agent processes; each is killed at the end of the test if still running."""
    started: list[AgentProcess] = []

    class _Agent(AgentProcess):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(*args, env=env)
            started.append(self)

    yield _Agent
    for agent in started:
        agent.kill()
