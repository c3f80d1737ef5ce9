"""GPU memory per model: NVML readings (scenario-driven fake pynvml) and what the model manager reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import load_scenario

from models import mlp, save
from xpud.agent.serving.gpumemory import GpuMemory, GpuReading, growth
from xpud.agent.serving.manager import ModelManager
from xpud.plugins.nvml import Nvml

GIB = 1 << 30


def reader(scenario: str = "h100_sxm", **overrides: object) -> tuple[GpuMemory, object]:
    fake = load_scenario(scenario, **overrides)
    return GpuMemory(Nvml(fake)), fake


def test_reads_this_process_and_the_device():
    memory, fake = reader()
    fake.devices[0]["processes"] = [{"pid": 1, "used_memory": 5 * GIB}, {"pid": "self", "used_memory": 2 * GIB}]
    reading = memory.read(0)
    assert reading == GpuReading(process=2 * GIB, device=fake.devices[0]["memory"]["used"])
    memory.close()


def test_process_not_listed_or_unknown_reads_none():
    memory, fake = reader()
    fake.devices[0]["processes"] = [{"pid": 1, "used_memory": GIB}]
    assert memory.read(0).process is None
    fake.devices[0]["processes"] = [{"pid": "self", "used_memory": None}]  # NVML: not available (e.g. no accounting)
    assert memory.read(0).process is None
    assert memory.read(0).device is not None


def test_no_driver_reads_nothing():
    memory, _ = reader("no_driver")
    assert memory.read(0) == GpuReading(None, None)


def test_lost_gpu_reads_nothing():
    memory, fake = reader()
    fake.lost.add(0)  # NVML answers GpuIsLost for it from now on
    assert memory.read(0) == GpuReading(None, None)


def test_unknown_index_reads_nothing():
    memory, _ = reader()
    assert memory.read(7) == GpuReading(None, None)


@pytest.mark.parametrize(
    ("before", "after", "grown"),
    [
        (GpuReading(None, 10 * GIB), GpuReading(GIB, 11 * GIB), GIB),  # first context on the device: from 0
        (GpuReading(GIB, 10 * GIB), GpuReading(3 * GIB, 15 * GIB), 2 * GIB),  # own figure, whatever others do
        (GpuReading(None, 10 * GIB), GpuReading(None, 12 * GIB), 2 * GIB),  # PID never listed: the device's
        (GpuReading(None, 10 * GIB), GpuReading(None, 9 * GIB), 0),  # others freed memory meanwhile
        (GpuReading(None, None), GpuReading(None, None), None),  # NVML cannot say
    ],
)
def test_growth(before, after, grown):
    assert growth(before, after) == grown


class Readings:
    """Stands in for GpuMemory where there is no GPU: answers each read from a list, records the indexes."""

    def __init__(self, *readings: GpuReading) -> None:
        self.readings = list(readings)
        self.indexes: list[int] = []
        self.closed = False

    def read(self, index: int) -> GpuReading:
        self.indexes.append(index)
        return self.readings.pop(0)

    def close(self) -> None:
        self.closed = True


GPU_FALLBACK = ('instance_group [{ kind: KIND_GPU, gpus: [0] }]\n'
                'parameters { key: "allow_cpu_fallback" value { string_value: "true" } }\n')


async def load(repo: Path, readings: Readings | None, gpus: list[int]) -> ModelManager:
    manager = ModelManager(repo, gpus=gpus, gpu_memory=readings)  # type: ignore[arg-type]
    await manager.load("m")
    return manager


def test_model_on_a_gpu_reports_its_gpu_memory(tmp_path):
    save(mlp(), tmp_path, "m", GPU_FALLBACK)  # no GPU here: ORT runs it on the CPU, the placement stays gpu:0
    readings = Readings(GpuReading(GIB, 20 * GIB), GpuReading(GIB + (300 << 20), 30 * GIB))

    async def scenario() -> None:
        manager = await load(tmp_path, readings, [0])
        mv = manager.get("m")
        assert readings.indexes == [0, 0]
        assert mv.memory_on_gpu and mv.memory_bytes == 300 << 20
        assert mv.host_memory_bytes >= 0
        await manager.close()
        assert readings.closed

    asyncio.run(scenario())


def test_model_on_the_cpu_reports_host_memory(tmp_path):
    save(mlp(), tmp_path, "m", "instance_group [{ kind: KIND_CPU }]\n")
    readings = Readings()

    async def scenario() -> None:
        manager = await load(tmp_path, readings, [0])  # the node has a GPU; the model asks for the CPU
        mv = manager.get("m")
        assert readings.indexes == [] and not mv.memory_on_gpu
        assert mv.memory_bytes == mv.host_memory_bytes
        await manager.close()

    asyncio.run(scenario())


def test_unmeasurable_gpu_falls_back_to_host_memory(tmp_path):
    save(mlp(), tmp_path, "m", GPU_FALLBACK)
    readings = Readings(GpuReading(None, None), GpuReading(None, None))

    async def scenario() -> None:
        manager = await load(tmp_path, readings, [0])
        mv = manager.get("m")
        assert not mv.memory_on_gpu and mv.memory_bytes == mv.host_memory_bytes
        await manager.close()

    asyncio.run(scenario())
