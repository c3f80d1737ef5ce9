"""proto.status (one error -> gRPC status mapping for every servicer) and proto.devices (the GPU vendor table)."""

from __future__ import annotations

import grpc
import pytest

from xpud.proto.devices import gpu_index, gpu_providers
from xpud.proto.status import InvalidArgument, NotFound, StatusError, grpc_status, status_of


class Gone(Exception):
    pass


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (StatusError(grpc.StatusCode.UNAVAILABLE, "x"), grpc.StatusCode.UNAVAILABLE),
    (Gone(), grpc.StatusCode.NOT_FOUND),
    (KeyError("k"), grpc.StatusCode.INTERNAL),
])
def test_status_of(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_of(exc, [(Gone, grpc.StatusCode.NOT_FOUND)]) is code


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.got: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.got = (code, message)
        raise _Aborted


async def test_grpc_status_aborts_with_the_mapped_code_and_message() -> None:
    class Servicer:
        @grpc_status([(Gone, grpc.StatusCode.NOT_FOUND)])
        async def Get(self, request: str, context: object) -> str:
            if request == "gone":
                raise Gone("no such thing; create it first")
            if request == "bug":
                raise KeyError("k")
            return request

    ctx = _Context()
    assert await Servicer().Get("ok", ctx) == "ok"
    with pytest.raises(_Aborted):
        await Servicer().Get("gone", ctx)
    assert ctx.got == (grpc.StatusCode.NOT_FOUND, "no such thing; create it first")
    with pytest.raises(_Aborted):
        await Servicer().Get("bug", ctx)
    assert ctx.got is not None and ctx.got[0] is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("device", "index"), [
    ("nvidia:1", 1), ("amd:0", 0), ("cpu:0", None), ("sim:2", None), ("nvidia:x", None), ("nvidia", None),
])
def test_gpu_index(device: str, index: int | None) -> None:
    assert gpu_index(device) == index


def test_gpu_providers() -> None:
    assert gpu_providers("amd")[0] == "ROCMExecutionProvider"
    assert gpu_providers("nvidia")[0] == "CUDAExecutionProvider"
    assert gpu_providers("acme") == gpu_providers("nvidia")
