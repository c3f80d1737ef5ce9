"""Model repository parsing, config auto-complete, placement and session checks (in-process, real ORT)."""

from __future__ import annotations

import pytest

from models import mlp, save, scale
from xpud.agent.serving.modelconfig import batch_policy, placements, warmup_inputs
from xpud.agent.serving.repository import ModelConfigError, TensorSpec, complete_config, read_config, version_files
from xpud.agent.serving.runtime import (
    CPU,
    CUDA,
    ROCM,
    TENSORRT,
    OrtInstance,
    Placement,
    SessionError,
    SessionOptions,
)
from xpud.proto.oip import mc

X = [TensorSpec("x", "tensor(float)", ("batch", 4))]
Y = [TensorSpec("y", "tensor(float)", ("batch", 3))]


def config_of(tmp_path, text: str, name: str = "m") -> mc.ModelConfig:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "config.pbtxt").write_text(text)
    return read_config(folder)


def test_autocomplete_from_the_graph(tmp_path):
    (tmp_path / "m").mkdir()
    config = complete_config(read_config(tmp_path / "m"), X, Y)
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", mc.TYPE_FP32, [4])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
    assert config.platform == "onnxruntime_onnx" and len(config.instance_group) == 1


def test_fixed_first_dimension_means_no_batching(tmp_path):
    (tmp_path / "m").mkdir()
    fixed = [TensorSpec("x", "tensor(int64)", (1, 8))]
    config = complete_config(read_config(tmp_path / "m"), fixed, fixed)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 8]
    assert config.input[0].data_type == mc.TYPE_INT64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 8\ninput [{ name: \"z\" }]", "config input 'z' is not in the model"),
        ("input [{ name: \"x\", data_type: TYPE_INT32 }]", "'x' is TYPE_INT32 in config.pbtxt but TYPE_FP32"),
        ("max_batch_size: -1", "max_batch_size must be >= 0"),
    ],
)
def test_config_that_contradicts_the_graph(tmp_path, text, message):
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        complete_config(config_of(tmp_path, text), X, Y)


def test_batching_config_on_a_fixed_graph_is_refused(tmp_path):
    fixed = [TensorSpec("x", "tensor(float)", (1, 4))]
    with pytest.raises(ModelConfigError, match="does not have a dynamic first dimension"):
        complete_config(config_of(tmp_path, "max_batch_size: 8"), fixed, fixed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: eight", "config.pbtxt: 1:17 .* Couldn.t parse integer: eight"),
        ('name: "other"', "must match its folder"),
        ('backend: "tensorflow"', "backend 'tensorflow' is not supported"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(ModelConfigError, match=message):
        config_of(tmp_path, text)


def test_version_policies(tmp_path):
    for v in (1, 2, 5):
        save(mlp(), tmp_path, "m", version=v)
    folder = tmp_path / "m"
    assert list(version_files(folder, read_config(folder))) == [5]
    assert list(version_files(folder, config_of(tmp_path, "version_policy { all {} }"))) == [1, 2, 5]
    assert list(version_files(folder, config_of(tmp_path, "version_policy { latest { num_versions: 2 } }"))) == [2, 5]
    assert list(version_files(folder, config_of(tmp_path, "version_policy { specific { versions: [1] } }"))) == [1]
    with pytest.raises(ModelConfigError, match=r"missing version\(s\) \[3\]"):
        version_files(folder, config_of(tmp_path, "version_policy { specific { versions: [3] } }"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelConfigError, match=r"no version folder holds model\.onnx"):
        version_files(tmp_path / "empty", read_config(tmp_path / "empty"))



@pytest.mark.parametrize(
    ("available", "chain"),
    [
        ([TENSORRT, CUDA, CPU], (CUDA,)),
        ([ROCM, CPU], (ROCM,)),  # an AMD build of ONNX Runtime
        ([CUDA, ROCM, CPU], (CUDA,)),
        ([CPU], (CUDA,)),  # no GPU provider at all: CUDA is asked for, and the session check says why it fails
    ],
)
def test_gpu_instances_ask_for_the_provider_this_build_has(tmp_path, available, chain):
    config = config_of(tmp_path, "instance_group [{ kind: KIND_GPU }]")
    assert [p.providers for p in placements(config, [0], available)] == [chain]

def test_placements_follow_instance_groups_and_gpus(tmp_path):
    auto = config_of(tmp_path, "instance_group [{ count: 2 }]")
    assert [p.label() for p in placements(auto, [], [CUDA, CPU])] == ["cpu", "cpu"]
    assert [p.label() for p in placements(auto, [0, 1], [CUDA, CPU])] == ["gpu:0", "gpu:0", "gpu:1", "gpu:1"]
    trt = config_of(tmp_path, """instance_group [{ kind: KIND_GPU, gpus: [1] }]
optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" }] } }""")
    (p,) = placements(trt, [0, 1], [TENSORRT, CUDA, CPU])
    assert p.providers == (TENSORRT, CUDA) and p.device_id == 1
    with pytest.raises(ModelConfigError, match=r"asks for GPU\(s\) \[3\]"):
        placements(config_of(tmp_path, "instance_group [{ kind: KIND_GPU, gpus: [3] }]"), [0], [CUDA, CPU])
    fallback = config_of(tmp_path, """instance_group [{ kind: KIND_GPU }]
parameters { key: "allow_cpu_fallback" value { string_value: "true" } }""")
    assert [p.label() for p in placements(fallback, [], [CUDA, CPU])] == ["cpu"]


def test_asking_for_cuda_without_a_gpu_fails_loudly_unless_fallback_is_allowed(tmp_path):
    path = save(mlp(), tmp_path, "m")
    with pytest.raises(SessionError, match="CUDAExecutionProvider"):
        OrtInstance(path, Placement("gpu", 0, (CUDA,)), SessionOptions(), "m_1_0")
    instance = OrtInstance(path, Placement("gpu", 0, (CUDA,), allow_cpu_fallback=True), SessionOptions(), "m_1_0")
    assert instance.provider == CPU  # the EP really in use is reported, not the one asked for
    instance.close()


def test_not_onnx_is_a_clear_session_error(tmp_path):
    bad = tmp_path / "m" / "1" / "model.onnx"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(SessionError, match=r"cannot load model\.onnx on cpu"):
        OrtInstance(bad, Placement("cpu", None, (CPU,)), SessionOptions(), "m_1_0")


def test_batch_policy_and_warmup_from_config(tmp_path):
    save(scale(), tmp_path, "m")
    config = config_of(tmp_path, """max_batch_size: 16
input [{ name: "x", data_type: TYPE_FP32, dims: [16] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [16] }]
dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 300
  priority_levels: 3 default_priority_level: 2
  default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 5000 allow_timeout_override: true } }
model_warmup [{ name: "ones", batch_size: 8, inputs { key: "x" value { data_type: TYPE_FP32 dims: [16]
  random_data: true } } }]""")
    policy = batch_policy(config)
    assert policy.dynamic and policy.max_batch_size == 16 and policy.preferred_batch_sizes == (4, 8)
    assert policy.max_queue_delay_s == pytest.approx(0.0003) and policy.priority_levels == 3
    assert policy.default_priority == 2 and policy.max_queue_size == 10
    assert policy.default_timeout_s == pytest.approx(0.005) and policy.allow_timeout_override
    ((name, count, inputs),) = warmup_inputs(config)
    assert name == "ones" and count == 1 and inputs["x"].shape == (8, 16)
    assert not batch_policy(config_of(tmp_path, "max_batch_size: 4")).dynamic


def test_intra_op_spinning_is_configurable(tmp_path):
    from xpud.agent.serving.modelconfig import session_options

    assert session_options(config_of(tmp_path, ""), 1).allow_spinning is None  # ONNX Runtime's default
    off = config_of(tmp_path, 'parameters { key: "intra_op_allow_spinning" value { string_value: "false" } }')
    options = session_options(off, 1)
    assert options.allow_spinning is False
    path = save(mlp(), tmp_path, "spin")
    instance = OrtInstance(path, Placement("cpu", None, (CPU,)), options, "spin_1_0")
    assert instance.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    instance.close()
