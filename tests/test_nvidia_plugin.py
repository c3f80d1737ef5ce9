"""NvidiaPlugin against scenario-driven fake NVML (tests/fakes), plus one real-GPU test marked ``gpu``."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

import psutil
import pynvml
import pytest
from fakes import load_scenario
from fakes.fake_pynvml import FakeNvml

from xpud.plugins.base import DeviceSample, Health, PartitionInfo, PluginUnavailable
from xpud.plugins.nvidia import NvidiaPlugin, decode_throttle, mig_profile, sysfs_numa_node
from xpud.plugins.nvml import DeviceLost, Nvml

MIB, GIB = 1 << 20, 1 << 30
LOGGER = "xpud.plugins.nvidia"


def plugin_for(fake: FakeNvml, **options: object) -> NvidiaPlugin:
    return NvidiaPlugin(options, nvml_module=fake)


def started(fake: FakeNvml | str, **options: object) -> tuple[FakeNvml, NvidiaPlugin]:
    fake = load_scenario(fake) if isinstance(fake, str) else fake
    plugin = plugin_for(fake, **options)
    plugin.discover()
    return fake, plugin


def by_id(samples: list[DeviceSample]) -> dict[str, DeviceSample]:
    return {s.device_id: s for s in samples}


def test_discover_a100_with_mig_devices() -> None:
    plugin = plugin_for(load_scenario("a100_8x_mig"))
    infos = {d.id: d for d in plugin.discover()}
    assert len(infos) == 8 + 7 + 2
    assert [i for i in infos if "/" not in i] == [f"nvidia:{n}" for n in range(8)]
    assert [infos[f"nvidia:{n}"].partitionable for n in range(8)] == [True, True] + [False] * 6

    gpu0 = infos["nvidia:0"]
    assert (gpu0.vendor, gpu0.kind, gpu0.plugin, gpu0.index, gpu0.partition) == ("nvidia", "gpu", "nvidia", 0, None)
    assert (gpu0.model, gpu0.memory_total, gpu0.compute_capability) == ("NVIDIA A100-SXM4-80GB", 80 * GIB, "8.0")
    assert (gpu0.pci_bus_id, gpu0.numa_node, gpu0.cores) == ("00000000:07:00.0", 3, 108)
    assert (gpu0.driver_version, gpu0.firmware_version) == ("535.129.03", "92.00.45.00.06")

    small = [infos[f"nvidia:0/mig:{n}"] for n in range(7)]
    for n, mig in enumerate(small):
        assert mig.uuid is not None and mig.uuid.startswith("MIG-")
        assert mig.model == "NVIDIA A100-SXM4-80GB MIG 1g.10gb"
        assert mig.memory_total == 9728 * MIB
        assert mig.cores == 14
        assert mig.partition == PartitionInfo("nvidia:0", "1g.10gb", gpu_instance_id=7 + n, compute_instance_id=0)
        assert (mig.compute_capability, mig.pci_bus_id, mig.numa_node) == ("8.0", gpu0.pci_bus_id, 3)
        assert mig.extra["parent_uuid"] == gpu0.uuid
    big = [infos["nvidia:1/mig:0"], infos["nvidia:1/mig:1"]]
    assert [m.partition.profile for m in big if m.partition] == ["3g.40gb", "3g.40gb"]
    assert [m.partition.gpu_instance_id for m in big if m.partition] == [1, 2]
    assert all(m.model == "NVIDIA A100-SXM4-80GB MIG 3g.40gb" and m.memory_total == 40192 * MIB for m in big)
    assert len({d.uuid for d in infos.values()}) == len(infos)
    assert infos["nvidia:5"].pci_bus_id == "00000000:90:00.0"


def test_discover_h100_facts() -> None:
    (info,) = plugin_for(load_scenario("h100_sxm")).discover()
    assert (info.id, info.model, info.compute_capability) == ("nvidia:0", "NVIDIA H100 80GB HBM3", "9.0")
    assert (info.uuid, info.memory_total) == ("GPU-6f1c2d3e-8a9b-4c5d-9e0f-112233445566", 81559 * MIB)
    assert (info.pci_bus_id, info.numa_node, info.cores, info.partitionable) == ("00000000:18:00.0", 0, 132, False)
    assert (info.driver_version, info.firmware_version) == ("550.54.15", "96.00.74.00.0B")


def test_discover_old_driver_decodes_bytes_and_reads_numa_from_sysfs(tmp_path: Path) -> None:
    for address, node in (("0000:05:00.0", "1\n"), ("0000:06:00.0", "-1\n")):
        (tmp_path / "bus" / "pci" / "devices" / address).mkdir(parents=True)
        (tmp_path / "bus" / "pci" / "devices" / address / "numa_node").write_text(node)
    fake = load_scenario("old_driver")
    infos = plugin_for(fake, sysfs_root=str(tmp_path)).discover()
    facts = [(i.model, i.driver_version, i.compute_capability) for i in infos]
    assert facts == [("Tesla K80", "470.256.02", "3.7")] * 2
    assert all(isinstance(i.uuid, str) and i.uuid.startswith("GPU-") for i in infos)
    assert infos[0].firmware_version == "80.21.25.00.01"
    assert [i.numa_node for i in infos] == [1, None]  # NVML function missing -> sysfs; -1 -> None
    assert [(i.cores, i.partitionable) for i in infos] == [(None, None)] * 2  # not supported, not 0/False


@pytest.mark.parametrize(
    ("no_driver", "message"),
    [
        ("driver_not_loaded", r"^NVIDIA driver not loaded \(NVML: Driver Not Loaded\)$"),
        ("library_not_found", r"^NVIDIA driver library libnvidia-ml\.so\.1 not found \(NVML: .*\)$"),
        ("no_permission", r"^no permission to access the NVIDIA driver \(NVML: Insufficient Permissions\)$"),
    ],
)
def test_no_driver_is_plugin_unavailable_with_a_clear_reason(no_driver: str, message: str) -> None:
    fake = load_scenario("no_driver", no_driver=no_driver)
    with pytest.raises(PluginUnavailable, match=message):
        plugin_for(fake).discover()
    assert fake.shutdown_count == 0 and not fake.initialized


def test_no_gpus_is_plugin_unavailable() -> None:
    fake = load_scenario("h100_sxm", devices=[])
    with pytest.raises(PluginUnavailable, match="no NVIDIA GPUs"):
        plugin_for(fake).discover()
    assert fake.shutdown_count == 1


def test_missing_pynvml_is_plugin_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(PluginUnavailable, match="nvidia-ml-py"):
        NvidiaPlugin().discover()


def test_sample_h100_units() -> None:
    _, plugin = started("h100_sxm")
    (s,) = plugin.sample()
    assert s.device_id == "nvidia:0" and s.health is Health.OK and s.health_reason is None
    assert (s.utilization, s.memory_utilization) == (pytest.approx(0.87), pytest.approx(0.42))
    assert (s.memory_used, s.memory_free) == (60213 * MIB, (81559 - 60213) * MIB)
    assert (s.temperature, s.clock_sm, s.clock_memory) == (64, 1980, 2619)
    assert (s.power_draw, s.power_limit) == (pytest.approx(512.345), pytest.approx(700.0))  # mW -> W
    assert s.energy == pytest.approx(987654.321)  # mJ -> J
    assert (s.pcie_tx, s.pcie_rx) == (204800 * 1024, 409600 * 1024)  # KB/s -> bytes/s
    assert (s.ecc_volatile_corrected, s.ecc_volatile_uncorrected) == (0, 0)
    assert (s.ecc_aggregate_corrected, s.ecc_aggregate_uncorrected) == (3, 0)
    assert s.throttle_reasons == ("sw_power_cap",)
    assert s.fan_speed is None  # SXM board: no fan -> NotSupported -> None, not 0
    assert s.events == ()
    assert s.processes is not None
    assert [(p.pid, p.memory_used) for p in s.processes] == [(2847261, 38912 * MIB), (2847390, None)]


def test_fan_speed_ratio_and_process_name() -> None:
    fake = load_scenario("h100_sxm")
    fake.devices[0]["fan_percent"] = 45
    fake.devices[0]["processes"] = [{"pid": "self", "used_memory": 512 * MIB}]
    _, plugin = started(fake)
    (s,) = plugin.sample()
    assert s.fan_speed == pytest.approx(0.45)
    assert s.processes is not None
    assert s.processes[0].name == psutil.Process().name()
    assert s.processes[0].memory_used == 512 * MIB


def test_mig_samples_have_memory_and_none_for_unsupported_fields() -> None:
    _, plugin = started("a100_8x_mig")
    samples = by_id(plugin.sample())
    assert len(samples) == 17 and all(s.health is Health.OK for s in samples.values())
    mig = samples["nvidia:0/mig:2"]
    assert (mig.memory_used, mig.memory_free) == (13 * MIB, (9728 - 13) * MIB)
    assert mig.processes is not None and [p.pid for p in mig.processes] == [31337]
    unsupported = ("utilization", "temperature", "power_draw", "energy", "clock_sm", "fan_speed", "pcie_tx",
                   "ecc_volatile_uncorrected", "throttle_reasons")
    assert [name for name in unsupported if getattr(mig, name) is not None] == []
    assert (samples["nvidia:0"].utilization, samples["nvidia:0"].temperature) == (None, 30)  # MIG mode: no util
    assert (samples["nvidia:4"].utilization, samples["nvidia:4"].throttle_reasons) == (0.4, ("gpu_idle",))


def test_old_driver_unsupported_and_missing_functions_are_none() -> None:
    fake, plugin = started("old_driver")
    s = plugin.sample()[0]
    none = ("energy", "clock_memory", "fan_speed", "pcie_tx", "pcie_rx", "ecc_aggregate_corrected")  # energy: FNF
    assert [name for name in none if getattr(s, name) is not None] == []
    assert (s.ecc_volatile_corrected, s.ecc_volatile_uncorrected) == (0, 0)  # supported zeros stay 0
    assert (s.utilization, s.temperature, s.power_draw, s.clock_sm) == (0.0, 34, pytest.approx(58.21), 562)
    # nvmlDeviceGetCurrentClocksEventReasons is not in a 470 driver: falls back to the ThrottleReasons call
    assert (s.throttle_reasons, fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"]) == (("gpu_idle",), 2)
    assert s.health is Health.OK


def test_old_bindings_without_functions() -> None:
    absent = ["nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetNumaNodeId", "nvmlEventSetWait_v2"]
    fake = load_scenario("h100_sxm", absent_functions=absent)
    assert not hasattr(fake, "nvmlDeviceGetNumaNodeId")
    plugin = plugin_for(fake, sysfs_root="/nonexistent")
    assert plugin.discover()[0].numa_node is None
    fake.inject_xid(0, 13)
    (s,) = plugin.sample()
    assert s.throttle_reasons == ("sw_power_cap",)
    assert [e.code for e in s.events] == [13]


def test_unavailable_fields_logged_once_per_device_and_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    _, plugin = started("old_driver")
    for _ in range(5):
        plugin.sample()
    messages = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    counts = Counter(messages)
    assert counts["nvidia:0: energy unavailable (NVML: Function Not Found)"] == 1
    assert counts["nvidia:1: energy unavailable (NVML: Function Not Found)"] == 1
    assert counts["nvidia:0: fan_speed unavailable (NVML: Not Supported)"] == 1
    assert counts["nvidia:0: pcie_rx unavailable (NVML: Not Supported)"] == 1
    assert set(counts.values()) == {1}


def test_no_permission_field_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake = load_scenario("h100_sxm")
    fake.devices[0]["no_permission"] = ["nvmlDeviceGetComputeRunningProcesses"]
    _, plugin = started(fake)
    samples = [plugin.sample()[0] for _ in range(3)]
    assert all(s.processes is None for s in samples)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "processes" in r.getMessage()]
    assert len(warnings) == 1
    assert "Insufficient Permissions" in warnings[0].getMessage()


def test_lost_gpu_fails_only_that_device() -> None:
    fake, plugin = started("gpu_lost")
    plugin.sample()
    before = sum(fake.calls.values())
    assert all(s.health is Health.OK for s in plugin.sample())
    per_gpu = (sum(fake.calls.values()) - before - 1) / 4  # minus one nvmlEventSetWait per sample
    third = by_id(plugin.sample())
    lost = third["nvidia:2"]
    assert (lost.health, lost.health_reason) == (Health.FAILED, "GPU has fallen off the bus (NVML: GPU is lost)")
    assert [(e.kind, e.message) for e in lost.events] == [("lost", lost.health_reason)]
    assert lost.utilization is None and lost.memory_used is None
    others = [third[i] for i in ("nvidia:0", "nvidia:1", "nvidia:3")]
    assert all(s.health is Health.OK and s.utilization == pytest.approx(0.55) for s in others)
    before = sum(fake.calls.values())
    fourth = by_id(plugin.sample())
    assert fourth["nvidia:2"].health is Health.FAILED and fourth["nvidia:2"].events == ()
    assert sum(fake.calls.values()) - before - 1 == 3 * per_gpu  # the lost GPU is not queried any more


def test_lose_gpu_fails_its_mig_devices_too() -> None:
    fake, plugin = started("a100_8x_mig")
    fake.lose_gpu(0)
    samples = by_id(plugin.sample())
    failed = sorted(i for i, s in samples.items() if s.health is Health.FAILED)
    assert failed == ["nvidia:0"] + [f"nvidia:0/mig:{n}" for n in range(7)]
    assert all(len([e for e in samples[i].events if e.kind == "lost"]) == 1 for i in failed)
    assert samples["nvidia:1/mig:0"].health is Health.OK and samples["nvidia:1"].temperature == 31


def test_gpu_lost_at_discovery_is_listed_and_failed() -> None:
    fake, models = load_scenario("gpu_lost"), ["Tesla V100-SXM2-32GB", "unknown"]
    fake.lose_gpu(1)
    plugin = plugin_for(fake)
    infos = plugin.discover()
    assert [(i.id, i.index, i.model) for i in infos[:2]] == [(f"nvidia:{n}", n, m) for n, m in enumerate(models)]
    first, second = by_id(plugin.sample()), by_id(plugin.sample())
    assert (first["nvidia:1"].health, [e.kind for e in first["nvidia:1"].events]) == (Health.FAILED, ["lost"])
    assert second["nvidia:1"].events == ()
    assert first["nvidia:0"].health is Health.OK


def test_throttle_reasons_decoded_and_hw_slowdown_degrades() -> None:
    assert decode_throttle(0) == ()
    assert decode_throttle(0x1 | 0x4 | 0x10 | 0x20 | 0x100) == (
        "gpu_idle", "sw_power_cap", "sync_boost", "sw_thermal", "display_clocks_setting")
    assert decode_throttle(0x2 | 0x8 | 0x40 | 0x80) == (
        "applications_clocks_setting", "hw_slowdown", "hw_thermal", "hw_power_brake")
    assert decode_throttle(0x400) == ("unknown_0x400",)
    fake = load_scenario("a100_8x_mig")
    fake.devices[0]["clocks_event_reasons"] = 0x48
    _, plugin = started(fake)
    samples = by_id(plugin.sample())
    assert samples["nvidia:0"].throttle_reasons == ("hw_slowdown", "hw_thermal")
    assert samples["nvidia:0"].health is Health.DEGRADED
    assert samples["nvidia:0"].health_reason == "clocks throttled: hw_slowdown, hw_thermal"
    assert samples["nvidia:0/mig:3"].health is Health.DEGRADED  # the parent's throttling slows every slice
    assert samples["nvidia:0/mig:3"].health_reason == "parent GPU: clocks throttled: hw_slowdown, hw_thermal"
    assert samples["nvidia:1/mig:0"].health is Health.OK


def test_injected_xid_goes_to_the_right_device_and_degrades() -> None:
    fake, plugin = started("a100_8x_mig")
    fake.inject_xid(3, 79)
    samples = by_id(plugin.sample())
    (event,) = samples["nvidia:3"].events
    assert (event.kind, event.code, event.message) == ("xid", 79, "XID 79: GPU has fallen off the bus")
    assert event.timestamp == samples["nvidia:3"].timestamp
    assert (samples["nvidia:3"].health, samples["nvidia:3"].health_reason) == (Health.DEGRADED, event.message)
    assert all(s.events == () and s.health is Health.OK for i, s in samples.items() if i != "nvidia:3")
    assert [(s.events, s.health) for s in plugin.sample() if s.device_id == "nvidia:3"] == [((), Health.OK)]


def test_xid_scoped_to_a_mig_instance() -> None:
    fake, plugin = started("a100_8x_mig")
    fake.inject_xid(0, 31, gpu_instance_id=9, compute_instance_id=0)  # GPU instance 9 is MIG slot 2
    fake.inject_xid(1, 48)  # not scoped: every MIG device of GPU 1
    samples = by_id(plugin.sample())
    with_events = sorted(i for i, s in samples.items() if s.events)
    assert with_events == ["nvidia:0", "nvidia:0/mig:2", "nvidia:1", "nvidia:1/mig:0", "nvidia:1/mig:1"]
    assert samples["nvidia:0/mig:2"].events[0].message == "XID 31: GPU memory page fault"
    assert (samples["nvidia:0/mig:2"].health, samples["nvidia:0/mig:1"].health) == (Health.DEGRADED, Health.OK)
    assert samples["nvidia:1/mig:1"].health_reason == "XID 48: Double-bit ECC error"


def test_scenario_events_and_ecc_degrade() -> None:
    events = [{"gpu": 0, "type": "xid", "data": 13}, {"gpu": 0, "type": "dbe"}, {"gpu": 0, "type": "sbe"},
              {"gpu": 0, "type": "xid", "data": 9999}]
    fake = load_scenario("h100_sxm", events=events)
    fake.devices[0]["ecc"]["volatile"]["uncorrected"] = 2
    _, plugin = started(fake)
    (s,) = plugin.sample()
    assert [(e.kind, e.code) for e in s.events] == [("xid", 13), ("ecc", None), ("ecc", None), ("xid", 9999)]
    assert s.events[3].message.startswith("XID 9999: ")
    assert s.health is Health.DEGRADED
    assert s.health_reason == ("2 uncorrected ECC errors (volatile); XID 13: Graphics engine exception; "
                               "uncorrectable (double-bit) ECC error; " + s.events[3].message)
    fake.devices[0]["ecc"]["volatile"]["uncorrected"] = 0
    assert plugin.sample()[0].health is Health.OK


def test_no_event_support_means_no_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake, plugin = started(load_scenario("h100_sxm", events_supported=False))
    fake.inject_xid(0, 79)
    assert [plugin.sample()[0].events for _ in range(3)] == [(), (), ()]
    assert len([r for r in caplog.records if "XID events are off" in r.getMessage()]) == 1
    fake = load_scenario("gpu_lost")  # one GPU without event support: the others still get theirs
    fake.devices[1]["supported_event_types"] = 0
    _, plugin = started(fake)
    fake.inject_xid(0, 43)
    fake.inject_xid(1, 43)
    assert [[e.code for e in s.events] for s in plugin.sample()] == [[43], [], [], []]


def test_discover_twice_inits_once_and_close_shuts_down() -> None:
    fake = load_scenario("a100_8x_mig")
    plugin = plugin_for(fake)
    assert plugin.discover() == plugin.discover()
    assert fake.init_count == 1 and [s.freed for s in fake.event_sets] == [True, False]
    plugin.sample()
    plugin.close()
    plugin.close()
    assert fake.shutdown_count == 1 and not fake.initialized
    assert [s.freed for s in fake.event_sets] == [True, True]
    assert plugin.sample() == []


def test_helpers(tmp_path: Path) -> None:
    a100 = 81920 * MIB
    sizes = ((1, 1, 9728), (2, 2, 19968), (3, 3, 40192), (7, 7, 80896))
    assert [mig_profile(g, c, mb, a100) for g, c, mb in sizes] == ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]
    assert mig_profile(3, 1, 40192, a100) == "1c.3g.40gb"
    assert mig_profile(1, 1, 4864, 40536 * MIB) == "1g.5gb"  # A100 40GB
    assert mig_profile(1, 1, 9728, None) == "1g.10gb"
    (tmp_path / "bus/pci/devices/0001:3b:00.0").mkdir(parents=True)
    (tmp_path / "bus/pci/devices/0001:3b:00.0/numa_node").write_text("2\n")
    assert sysfs_numa_node(str(tmp_path), "00000001:3B:00.0") == 2
    assert sysfs_numa_node(str(tmp_path), "00000000:07:00.0") is None
    assert sysfs_numa_node(str(tmp_path), None) is None


def test_nvml_query_maps_errors() -> None:
    fake = load_scenario("h100_sxm")
    nvml = Nvml(fake)

    def raises(error: type[Exception]) -> object:
        raise error()

    for name in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission",
                 "NVMLError_InvalidArgument", "NVMLError_Timeout"):
        assert nvml.query("nvidia:0", name, raises, getattr(fake, name)) is None
    for name, reason in (("NVMLError_GpuIsLost", "GPU has fallen off the bus"),
                         ("NVMLError_ResetRequired", "GPU requires a reset"),
                         ("NVMLError_Unknown", "unknown error state")):
        with pytest.raises(DeviceLost, match=reason) as err:
            nvml.query("nvidia:0", "x", raises, getattr(fake, name))
        assert err.value.device_key == "nvidia:0"
    assert nvml.query("nvidia:0", "name", lambda: b"Tesla K80") == "Tesla K80"
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost and fake.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM


@pytest.mark.gpu
def test_real_nvml() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML unavailable here: {exc}")
    plugin = NvidiaPlugin()
    try:
        infos = plugin.discover()
        gpus = [i for i in infos if i.partition is None]
        assert len(gpus) == pynvml.nvmlDeviceGetCount()
        for info in gpus:
            assert info.uuid and info.uuid.startswith("GPU-") and info.memory_total and info.memory_total > GIB
            assert info.compute_capability and info.pci_bus_id and info.driver_version and info.model != "unknown"
        samples = [plugin.sample() for _ in range(2)][-1]
        assert [s.device_id for s in samples] == [i.id for i in infos]
        for s in samples:
            assert s.health in (Health.OK, Health.DEGRADED), s.health_reason
            assert s.memory_used is not None and s.memory_free is not None
            assert all(r is None or 0.0 <= r <= 1.0 for r in (s.utilization, s.memory_utilization, s.fan_speed))
            assert s.power_draw is None or 0 < s.power_draw < 2000
            assert s.temperature is None or 0 < s.temperature < 120
            assert s.throttle_reasons is None or isinstance(s.throttle_reasons, tuple)
    finally:
        plugin.close()
        pynvml.nvmlShutdown()
