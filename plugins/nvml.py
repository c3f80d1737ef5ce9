"""The one place that talks to NVML (nvidia-ml-py's ``pynvml`` module).

In the style of nvitop's ``libnvml``: the vendor module is passed in (tests hand
in a fake with the same exception classes), initialisation is lazy, under a
lock and idempotent, and every query goes through :meth:`Nvml.query`, which
turns "this device cannot answer that" into ``None`` (logged once per device
and field) and "this device is gone" into :class:`DeviceLost`.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .base import LogOnce

logger = logging.getLogger(__name__)

NOT_AVAILABLE = (2**64 - 1, 2**32 - 1)  # NVML_VALUE_NOT_AVAILABLE (ulonglong, uint)
# The field is absent on this device or driver: the answer is None.
UNAVAILABLE_ERRORS: tuple[str, ...] = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_NoPermission",
    "NVMLError_InvalidArgument",
)
# The device itself is unusable: only that device is marked FAILED.
# (pynvml names NVML_ERROR_RESET_REQUIRED "NVMLError_ResetRequired"; the other spelling is kept for safety.)
LOST_ERRORS: tuple[str, ...] = (
    "NVMLError_GpuIsLost",
    "NVMLError_ResetRequired",
    "NVMLError_GpuRequiresReset",
    "NVMLError_Unknown",
)
_LOST_REASONS: dict[str, str] = {
    "NVMLError_GpuIsLost": "GPU has fallen off the bus",
    "NVMLError_ResetRequired": "GPU requires a reset",
    "NVMLError_GpuRequiresReset": "GPU requires a reset",
    "NVMLError_Unknown": "GPU is in an unknown error state",
}


XID_MEANINGS: dict[int, str] = {
    13: "Graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "Double-bit ECC error",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
# nvmlClocksEventReason* bits (same values as the older nvmlClocksThrottleReason*).
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks_setting"),
)
MIB, GIB = 1 << 20, 1 << 30


def xid_message(code: int) -> str:
    return f"XID {code}: {XID_MEANINGS.get(code, 'see NVIDIA XID documentation')}"


def decode_throttle(mask: int) -> tuple[str, ...]:
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    known = sum(bit for bit, _ in THROTTLE_REASONS)
    names += [f"unknown_{1 << b:#x}" for b in range(64) if mask & ~known & (1 << b)]
    return tuple(names)


def mig_profile(gi_slices: int, ci_slices: int, memory_mb: int, parent_total: int | None) -> str:
    """NVIDIA's profile name ("1g.10gb", "1c.3g.40gb"): memory as a fraction of the GPU rounded up to 1/8."""
    if parent_total:
        fraction = math.ceil(memory_mb * MIB / parent_total * 8) / 8
        gb = math.floor(fraction * -(-parent_total // GIB) + 0.5)
    else:
        gb = math.floor(memory_mb / 1024 + 0.5)
    prefix = f"{ci_slices}c." if ci_slices and ci_slices != gi_slices else ""
    return f"{prefix}{gi_slices}g.{gb}gb"


class _Never(Exception):
    """Stands in for an exception class the vendor module does not define; never raised."""


class DeviceLost(Exception):
    """A query found the device lost (fallen off the bus, needs a reset, unknown error)."""

    def __init__(self, device_key: str, field: str, error: BaseException) -> None:
        self.device_key = device_key
        self.field = field
        self.error = error
        self.reason = f"{_LOST_REASONS.get(type(error).__name__, 'GPU lost')} (NVML: {error})"
        super().__init__(f"{device_key}: {self.reason} while reading {field}")


def decode(value: Any) -> Any:
    """Old bindings return ``bytes`` for strings; everything else passes through."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return value


def handle_key(handle: Any) -> Any:
    """A hashable identity for a device handle (ctypes pointers compare by object, not address)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle if getattr(type(handle), "__hash__", None) else id(handle)


class Nvml:
    """Owns the vendor module: lazy init/shutdown and error-mapped queries."""

    def __init__(self, module: Any = None, log: logging.Logger | None = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._initialized = False
        self.log_once = LogOnce(log or logger)

    @property
    def module(self) -> Any:
        """The vendor module, imported on first use (raises ImportError when nvidia-ml-py is missing)."""
        if self._module is None:
            import pynvml  # nvidia-ml-py

            self._module = pynvml
        return self._module

    @property
    def initialized(self) -> bool:
        return self._initialized

    def error(self, name: str) -> type[BaseException]:
        cls = getattr(self.module, name, None)
        return cls if isinstance(cls, type) and issubclass(cls, BaseException) else _Never

    def errors(self, names: Sequence[str]) -> tuple[type[BaseException], ...]:
        return tuple(self.error(name) for name in names)

    def has(self, name: str) -> bool:
        return callable(getattr(self.module, name, None))

    def init(self) -> None:
        """``nvmlInit`` once; NVML errors propagate to the caller (discover maps them)."""
        with self._lock:
            if not self._initialized:
                self.module.nvmlInit()
                self._initialized = True

    def shutdown(self) -> None:
        """``nvmlShutdown`` if initialised; safe to call any number of times."""
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            try:
                self.module.nvmlShutdown()
            except self.error("NVMLError") as exc:
                logger.warning("nvmlShutdown failed: %s", exc)

    def call(self, device_key: str, field: str, func: Callable[..., Any], *args: Any) -> Any:
        """Call ``func``; a lost device raises :class:`DeviceLost`, other NVML errors propagate."""
        try:
            return decode(func(*args))
        except self.errors(LOST_ERRORS) as exc:
            raise DeviceLost(device_key, field, exc) from exc

    def query(self, device_key: str, field: str, func: Callable[..., Any], *args: Any) -> Any:
        """Call ``func``; ``None`` when the device cannot answer (logged once per device and field).

        Raises :class:`DeviceLost` when the device is lost.
        """
        try:
            return self.call(device_key, field, func, *args)
        except self.errors(UNAVAILABLE_ERRORS) as exc:
            self._unavailable(device_key, field, exc)
        except self.error("NVMLLibraryMismatchError") as exc:  # unversioned symbol missing in an old driver
            self._unavailable(device_key, field, exc)
        except self.error("NVMLError") as exc:
            self.log_once((device_key, field), "%s: %s failed (NVML: %s)", device_key, field, exc)
        return None

    def query_any(self, device_key: str, field: str, names: Sequence[str], *args: Any) -> Any:
        """Like :meth:`query` over the first of ``names`` that the bindings and the driver both have."""
        not_found = (self.error("NVMLError_FunctionNotFound"), self.error("NVMLLibraryMismatchError"))
        last: BaseException | None = None
        for name in names:
            func = getattr(self.module, name, None)
            if not callable(func):
                continue
            try:
                return self.call(device_key, field, func, *args)
            except not_found as exc:
                last = exc
            except self.errors(UNAVAILABLE_ERRORS) as exc:
                self._unavailable(device_key, field, exc)
                return None
            except self.error("NVMLError") as exc:
                self.log_once((device_key, field), "%s: %s failed (NVML: %s)", device_key, field, exc)
                return None
        self._unavailable(device_key, field, last or AttributeError(f"none of {', '.join(names)} in bindings"))
        return None

    def _unavailable(self, device_key: str, field: str, exc: BaseException) -> None:
        quiet = isinstance(exc, (AttributeError, self.error("NVMLLibraryMismatchError"))) or isinstance(
            exc, self.errors(("NVMLError_NotSupported", "NVMLError_FunctionNotFound"))
        )
        self.log_once(
            (device_key, field),
            "%s: %s unavailable (NVML: %s)",
            device_key,
            field,
            exc,
            level=logging.INFO if quiet else logging.WARNING,
        )
