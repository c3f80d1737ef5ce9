"""`--json` output: 64-bit integers as numbers, enums as the tables' words, names as in the .proto."""

from __future__ import annotations

from xpud.proto import admin_pb2 as apb
from xpud.proto import telemetry_pb2 as tpb
from xpud.render import message_dict


def test_numbers_and_words() -> None:
    pool = apb.GetPoolResponse(devices=[apb.PoolDevice(
        node="n1", memory_allocated=3 << 30, device=tpb.DeviceInfo(id="sim:0", memory_total=80 << 30),
        sample=tpb.DeviceSample(health=tpb.HEALTH_OK, health_state=tpb.DEVICE_HEALTH_SUSPECT))])
    out = message_dict(pool)["devices"][0]
    assert out["memory_allocated"] == 3 << 30 and out["device"]["memory_total"] == 80 << 30
    assert out["sample"]["health"] == "ok" and out["sample"]["health_state"] == "suspect"
    listing = message_dict(apb.ListModelsResponse(models=[apb.ModelInfo(name="m", size_bytes=623)]))
    assert listing == {"models": [{"name": "m", "size_bytes": 623}]}
