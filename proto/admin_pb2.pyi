from xpud.proto import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("name", "state", "cordoned", "labels", "zone", "agent_version", "inference_endpoint", "generation_desired", "generation_observed", "last_seen", "devices", "execution_providers")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_DESIRED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_OBSERVED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    cordoned: bool
    labels: _containers.ScalarMap[str, str]
    zone: str
    agent_version: str
    inference_endpoint: str
    generation_desired: int
    generation_observed: int
    last_seen: float
    devices: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., cordoned: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., zone: _Optional[str] = ..., agent_version: _Optional[str] = ..., inference_endpoint: _Optional[str] = ..., generation_desired: _Optional[int] = ..., generation_observed: _Optional[int] = ..., last_seen: _Optional[float] = ..., devices: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class PoolDevice(_message.Message):
    __slots__ = ("node", "device", "sample", "memory_allocated", "replicas", "node_state")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    node: str
    device: _telemetry_pb2.DeviceInfo
    sample: _telemetry_pb2.DeviceSample
    memory_allocated: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    node_state: str
    def __init__(self, node: _Optional[str] = ..., device: _Optional[_Union[_telemetry_pb2.DeviceInfo, _Mapping]] = ..., sample: _Optional[_Union[_telemetry_pb2.DeviceSample, _Mapping]] = ..., memory_allocated: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., node_state: _Optional[str] = ...) -> None: ...

class GetPoolRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPoolResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[PoolDevice]
    def __init__(self, devices: _Optional[_Iterable[_Union[PoolDevice, _Mapping]]] = ...) -> None: ...

class PushModelChunk(_message.Message):
    __slots__ = ("name", "version", "filename", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    filename: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., filename: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "digest", "size_bytes", "created", "inputs", "outputs", "profile")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    size_bytes: int
    created: float
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    profile: _containers.RepeatedCompositeFieldContainer[DeviceProfile]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created: _Optional[float] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., profile: _Optional[_Iterable[_Union[DeviceProfile, _Mapping]]] = ...) -> None: ...

class DeviceProfile(_message.Message):
    __slots__ = ("device_model", "requests", "errors", "latency_ms", "throughput_rps", "throughput_per_gib", "memory_bytes")
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_GIB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_model: str
    requests: int
    errors: int
    latency_ms: float
    throughput_rps: float
    throughput_per_gib: float
    memory_bytes: int
    def __init__(self, device_model: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency_ms: _Optional[float] = ..., throughput_rps: _Optional[float] = ..., throughput_per_gib: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "datatype", "shape", "dim_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DIM_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dim_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dim_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "model", "version", "replicas", "device", "memory_bytes", "priority", "labels", "zone", "max_batch_size", "strategy", "traffic", "max_inflight", "max_unavailable", "auto_rollback_error_rate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: str
    replicas: int
    device: str
    memory_bytes: int
    priority: int
    labels: _containers.ScalarMap[str, str]
    zone: str
    max_batch_size: int
    strategy: str
    traffic: _containers.RepeatedCompositeFieldContainer[VersionWeight]
    max_inflight: int
    max_unavailable: int
    auto_rollback_error_rate: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., replicas: _Optional[int] = ..., device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., priority: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., zone: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., strategy: _Optional[str] = ..., traffic: _Optional[_Iterable[_Union[VersionWeight, _Mapping]]] = ..., max_inflight: _Optional[int] = ..., max_unavailable: _Optional[int] = ..., auto_rollback_error_rate: _Optional[float] = ...) -> None: ...

class VersionWeight(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: int
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node", "device", "state", "reason", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    device: str
    state: str
    reason: str
    version: str
    def __init__(self, node: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("version", "weight", "replicas", "ready", "request_rate", "error_rate", "p50_ms", "p99_ms", "requests")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: int
    replicas: int
    ready: int
    request_rate: float
    error_rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[int] = ..., replicas: _Optional[int] = ..., ready: _Optional[int] = ..., request_rate: _Optional[float] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., requests: _Optional[int] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("spec", "phase", "reason", "ready", "replicas", "versions", "rollout")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    spec: Deployment
    phase: str
    reason: str
    ready: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    rollout: RolloutStatus
    def __init__(self, spec: _Optional[_Union[Deployment, _Mapping]] = ..., phase: _Optional[str] = ..., reason: _Optional[str] = ..., ready: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class RolloutNode(_message.Message):
    __slots__ = ("node", "state", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    state: str
    version: str
    def __init__(self, node: _Optional[str] = ..., state: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("state", "from_model", "from_version", "to_model", "to_version", "updated", "nodes", "reason", "started", "rollback", "per_node", "previous_model", "previous_version")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    state: str
    from_model: str
    from_version: str
    to_model: str
    to_version: str
    updated: int
    nodes: int
    reason: str
    started: float
    rollback: bool
    per_node: _containers.RepeatedCompositeFieldContainer[RolloutNode]
    previous_model: str
    previous_version: str
    def __init__(self, state: _Optional[str] = ..., from_model: _Optional[str] = ..., from_version: _Optional[str] = ..., to_model: _Optional[str] = ..., to_version: _Optional[str] = ..., updated: _Optional[int] = ..., nodes: _Optional[int] = ..., reason: _Optional[str] = ..., started: _Optional[float] = ..., rollback: _Optional[bool] = ..., per_node: _Optional[_Iterable[_Union[RolloutNode, _Mapping]]] = ..., previous_model: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentStatus]
    def __init__(self, deployments: _Optional[_Iterable[_Union[DeploymentStatus, _Mapping]]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "kind", "subject", "message", "actor")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    kind: str
    subject: str
    message: str
    actor: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., message: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after_seq", "limit", "since", "newest")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    since: float
    newest: bool
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ..., since: _Optional[float] = ..., newest: _Optional[bool] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class SetCordonRequest(_message.Message):
    __slots__ = ("node", "cordoned", "drain")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    node: str
    cordoned: bool
    drain: bool
    def __init__(self, node: _Optional[str] = ..., cordoned: _Optional[bool] = ..., drain: _Optional[bool] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "role", "created", "creator", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    created: float
    creator: str
    id: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., created: _Optional[float] = ..., creator: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: TokenInfo
    token: str
    def __init__(self, info: _Optional[_Union[TokenInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("name", "weights", "auto_rollback_error_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: _containers.RepeatedCompositeFieldContainer[VersionWeight]
    auto_rollback_error_rate: float
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[VersionWeight, _Mapping]]] = ..., auto_rollback_error_rate: _Optional[float] = ...) -> None: ...
