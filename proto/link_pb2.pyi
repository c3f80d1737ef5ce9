from xpud.proto import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node", "labels", "zone", "devices", "execution_providers", "agent_version", "generation", "instances", "inference_endpoint", "incarnation", "inference_tls")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TLS_FIELD_NUMBER: _ClassVar[int]
    node: str
    labels: _containers.ScalarMap[str, str]
    zone: str
    devices: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.DeviceInfo]
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    generation: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    inference_endpoint: str
    incarnation: str
    inference_tls: bool
    def __init__(self, node: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., zone: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_telemetry_pb2.DeviceInfo, _Mapping]]] = ..., execution_providers: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., generation: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., inference_endpoint: _Optional[str] = ..., incarnation: _Optional[str] = ..., inference_tls: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("telemetry_interval_s", "lease_s", "controller_version")
    TELEMETRY_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    telemetry_interval_s: float
    lease_s: float
    controller_version: str
    def __init__(self, telemetry_interval_s: _Optional[float] = ..., lease_s: _Optional[float] = ..., controller_version: _Optional[str] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("samples", "seq")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.DeviceSample]
    seq: int
    def __init__(self, samples: _Optional[_Iterable[_Union[_telemetry_pb2.DeviceSample, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("deployment", "model", "version", "digest", "state", "reason", "devices", "memory_bytes", "execution_provider")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model: str
    version: str
    digest: str
    state: str
    reason: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    execution_provider: str
    def __init__(self, deployment: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ..., execution_provider: _Optional[str] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("generation", "instances")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    def __init__(self, generation: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "telemetry", "status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    telemetry: Telemetry
    status: StatusReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ..., status: _Optional[_Union[StatusReport, _Mapping]] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("deployment", "model", "version", "digest", "size_bytes", "devices", "max_batch_size", "priority")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model: str
    version: str
    digest: str
    size_bytes: int
    devices: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    priority: int
    def __init__(self, deployment: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., devices: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., priority: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "assignments")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    assignments: _containers.RepeatedCompositeFieldContainer[ModelAssignment]
    def __init__(self, generation: _Optional[int] = ..., assignments: _Optional[_Iterable[_Union[ModelAssignment, _Mapping]]] = ...) -> None: ...

class TokenKey(_message.Message):
    __slots__ = ("id", "name", "role", "salt", "hash")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    salt: bytes
    hash: bytes
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., salt: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenKey]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenKey, _Mapping]]] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("welcome", "desired", "tokens")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    desired: DesiredState
    tokens: Tokens
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., desired: _Optional[_Union[DesiredState, _Mapping]] = ..., tokens: _Optional[_Union[Tokens, _Mapping]] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("data", "offset", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...
