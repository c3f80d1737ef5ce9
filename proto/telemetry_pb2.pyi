from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILED: _ClassVar[Health]
    HEALTH_UNKNOWN: _ClassVar[Health]

class DeviceHealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_HEALTH_UNSPECIFIED: _ClassVar[DeviceHealthState]
    DEVICE_HEALTH_HEALTHY: _ClassVar[DeviceHealthState]
    DEVICE_HEALTH_SUSPECT: _ClassVar[DeviceHealthState]
    DEVICE_HEALTH_UNHEALTHY: _ClassVar[DeviceHealthState]
    DEVICE_HEALTH_RECOVERING: _ClassVar[DeviceHealthState]
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILED: Health
HEALTH_UNKNOWN: Health
DEVICE_HEALTH_UNSPECIFIED: DeviceHealthState
DEVICE_HEALTH_HEALTHY: DeviceHealthState
DEVICE_HEALTH_SUSPECT: DeviceHealthState
DEVICE_HEALTH_UNHEALTHY: DeviceHealthState
DEVICE_HEALTH_RECOVERING: DeviceHealthState

class PartitionInfo(_message.Message):
    __slots__ = ("parent_id", "profile", "gpu_instance_id", "compute_instance_id")
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    GPU_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    def __init__(self, parent_id: _Optional[str] = ..., profile: _Optional[str] = ..., gpu_instance_id: _Optional[int] = ..., compute_instance_id: _Optional[int] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("id", "vendor", "kind", "model", "plugin", "uuid", "index", "memory_total", "driver_version", "firmware_version", "compute_capability", "pci_bus_id", "numa_node", "cores", "partition", "partitionable", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONABLE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    id: str
    vendor: str
    kind: str
    model: str
    plugin: str
    uuid: str
    index: int
    memory_total: int
    driver_version: str
    firmware_version: str
    compute_capability: str
    pci_bus_id: str
    numa_node: int
    cores: int
    partition: PartitionInfo
    partitionable: bool
    extra: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., vendor: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., plugin: _Optional[str] = ..., uuid: _Optional[str] = ..., index: _Optional[int] = ..., memory_total: _Optional[int] = ..., driver_version: _Optional[str] = ..., firmware_version: _Optional[str] = ..., compute_capability: _Optional[str] = ..., pci_bus_id: _Optional[str] = ..., numa_node: _Optional[int] = ..., cores: _Optional[int] = ..., partition: _Optional[_Union[PartitionInfo, _Mapping]] = ..., partitionable: _Optional[bool] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DeviceEvent(_message.Message):
    __slots__ = ("kind", "message", "code", "timestamp")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    code: int
    timestamp: float
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., code: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "name", "memory_used")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    memory_used: int
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., memory_used: _Optional[int] = ...) -> None: ...

class ThrottleReasons(_message.Message):
    __slots__ = ("reasons",)
    REASONS_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessList(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    def __init__(self, processes: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ...) -> None: ...

class DeviceSample(_message.Message):
    __slots__ = ("device_id", "timestamp", "health", "health_reason", "utilization", "memory_utilization", "memory_used", "memory_free", "temperature", "temperature_memory", "power_draw", "power_limit", "energy", "clock_sm", "clock_memory", "fan_speed", "ecc_volatile_corrected", "ecc_volatile_uncorrected", "ecc_aggregate_corrected", "ecc_aggregate_uncorrected", "pcie_tx", "pcie_rx", "throttle_reasons", "events", "processes", "extra", "cleared", "full", "health_state", "health_state_reason")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    POWER_DRAW_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SM_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MEMORY_FIELD_NUMBER: _ClassVar[int]
    FAN_SPEED_FIELD_NUMBER: _ClassVar[int]
    ECC_VOLATILE_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_VOLATILE_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_AGGREGATE_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_AGGREGATE_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    PCIE_TX_FIELD_NUMBER: _ClassVar[int]
    PCIE_RX_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    timestamp: float
    health: Health
    health_reason: str
    utilization: float
    memory_utilization: float
    memory_used: int
    memory_free: int
    temperature: float
    temperature_memory: float
    power_draw: float
    power_limit: float
    energy: float
    clock_sm: float
    clock_memory: float
    fan_speed: float
    ecc_volatile_corrected: int
    ecc_volatile_uncorrected: int
    ecc_aggregate_corrected: int
    ecc_aggregate_uncorrected: int
    pcie_tx: float
    pcie_rx: float
    throttle_reasons: ThrottleReasons
    events: _containers.RepeatedCompositeFieldContainer[DeviceEvent]
    processes: ProcessList
    extra: _containers.ScalarMap[str, float]
    cleared: _containers.RepeatedScalarFieldContainer[str]
    full: bool
    health_state: DeviceHealthState
    health_state_reason: str
    def __init__(self, device_id: _Optional[str] = ..., timestamp: _Optional[float] = ..., health: _Optional[_Union[Health, str]] = ..., health_reason: _Optional[str] = ..., utilization: _Optional[float] = ..., memory_utilization: _Optional[float] = ..., memory_used: _Optional[int] = ..., memory_free: _Optional[int] = ..., temperature: _Optional[float] = ..., temperature_memory: _Optional[float] = ..., power_draw: _Optional[float] = ..., power_limit: _Optional[float] = ..., energy: _Optional[float] = ..., clock_sm: _Optional[float] = ..., clock_memory: _Optional[float] = ..., fan_speed: _Optional[float] = ..., ecc_volatile_corrected: _Optional[int] = ..., ecc_volatile_uncorrected: _Optional[int] = ..., ecc_aggregate_corrected: _Optional[int] = ..., ecc_aggregate_uncorrected: _Optional[int] = ..., pcie_tx: _Optional[float] = ..., pcie_rx: _Optional[float] = ..., throttle_reasons: _Optional[_Union[ThrottleReasons, _Mapping]] = ..., events: _Optional[_Iterable[_Union[DeviceEvent, _Mapping]]] = ..., processes: _Optional[_Union[ProcessList, _Mapping]] = ..., extra: _Optional[_Mapping[str, float]] = ..., cleared: _Optional[_Iterable[str]] = ..., full: _Optional[bool] = ..., health_state: _Optional[_Union[DeviceHealthState, str]] = ..., health_state_reason: _Optional[str] = ...) -> None: ...
