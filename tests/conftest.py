from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from helpers import AgentProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU and driver (skipped elsewhere)")
    # The processes tests start read no /etc/xpud/*.toml and no XPUD_AGENT_*/XPUD_CONTROLLER_* of the shell
    # that runs the tests: a test that wants them sets them itself.
    os.environ["XPUD_CONFIG_DIR"] = tempfile.mkdtemp(prefix="xpud-no-config-")
    for name in [n for n in os.environ if n.startswith(("XPUD_AGENT_", "XPUD_CONTROLLER_"))]:
        del os.environ[name]


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
