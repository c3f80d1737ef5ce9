"""`xpud deploy` flags and `xpud apply -f` files: a bad value is one line on stderr and exit 2, before any call.

--controller points at a port where nothing listens: the error seen must be the validation error, not
"cannot reach the controller"."""

from __future__ import annotations

import pytest

from helpers import run_xpud
from xpud.validate import ValidationError, deployment, parse_size

NOWHERE = ["--controller", "127.0.0.1:1"]


def _one_line_exit_2(result, message):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "-1"], "xpud deploy: error: --replicas must be a whole number 0..1000, got -1"),
        (["--replicas", "1001"], "--replicas must be a whole number 0..1000, got 1001"),
        (["--replicas", "many"], "--replicas must be a whole number 0..1000, got 'many'"),
        (["--memory", "2G"], "--memory '2G' is not understood: use a number with one of B, KB, MB, GB, TB"),
        (["--memory", "lots"], "KiB, MiB, GiB, TiB (powers of 1024); a bare number is bytes"),
        (["--memory=-5MiB"], "--memory '-5MiB' is not understood"),
        (["--device", "tpu"], "--device must be one of gpu, cpu, any, got 'tpu'"),
        (["--strategy", "random"], "--strategy must be one of binpack, spread, got 'random'"),
        (["--priority", "-1"], "--priority must be a whole number >= 0, got -1"),
        (["--max-batch", "x"], "--max-batch must be a whole number >= 0, got 'x'"),
        (["--label", "novalue"], "label 'novalue' must look like KEY=VALUE"),
        (["--model", "m:latest"], "model version 'latest' must be a whole number (e.g. m:1)"),
        (["--model", "Bad!"], "model 'Bad!' is not valid: use NAME[:VERSION]"),
    ],
)
def test_bad_deploy_flag_is_refused_before_any_call(flags, message):
    args = ["deploy", "web", "--model", "iris", *flags, *NOWHERE]
    if "--model" in flags:
        args = ["deploy", "web", *flags, *NOWHERE]
    _one_line_exit_2(run_xpud(*args), message)


def test_bad_deployment_name_is_refused_before_any_call():
    _one_line_exit_2(run_xpud("deploy", "Bad_Name!", "--model", "iris", *NOWHERE),
                     "deployment name 'Bad_Name!' is not valid: use 1-63 lowercase letters")


def test_decimal_memory_is_read_with_a_note():
    result = run_xpud("deploy", "web", "--model", "iris", "--memory", "2GB", *NOWHERE)
    assert "note: memory 2GB is read as 2,000,000,000 bytes (1.86 GiB); write 2GiB" in result.stderr
    assert "cannot reach the controller" in result.stderr  # valid: it went on to call the controller
    assert result.returncode == 1


TOML_CASES = [
    ('name = "web"\nmodel = "iris"\nreplicas = "many"\n', "deployment 'web': replicas must be a whole number 0..1000, "
     "got 'many'"),
    ('name = "web"\nmodle = "iris"\n', ": unknown key 'modle' in deployment 'web' (did you mean 'model'?)"),
    ('name = "web"\n', "deployment 'web' has no 'model' (it needs name and model)"),
    ('model = "iris"\n', "deployment #1 has no 'name'"),
    ('name = "web"\nmodel = "iris"\nmemory = "2 gigs"\n', "deployment 'web': memory '2 gigs' is not understood"),
    ('name = "web"\nmodel = "iris"\nmemory = true\n', "deployment 'web': memory must be a size like 2GiB, got True"),
    ('name = "web"\nmodel = "iris"\nlabels = "rack"\n', "labels must be a table of KEY = VALUE, got 'rack'"),
    ('name = "web"\nmodel = "iris"\nzone = 3\n', "deployment 'web': zone must be a string, got 3"),
    ('name = "web"\nmodel = "iris"\ndevice = "tpu"\n', "device must be one of gpu, cpu, any, got 'tpu'"),
    ('name = "web"\nmodel = "iris"\nreplicas = true\n', "replicas must be a whole number 0..1000, got True"),
    ('name = "Web"\nmodel = "iris"\n', "deployment name 'Web' is not valid"),
    ('name = "web"\nmodel = "iris"\ntraffic = 90\n', "traffic must be a table of VERSION = PERCENT"),
    ('name = "web"\nmodel = "iris"\ntraffic = { "1" = 150 }\n', "traffic of version 1 must be a whole number 0..100"),
]


@pytest.mark.parametrize(("body", "message"), TOML_CASES)
def test_bad_toml_apply_file_is_refused_before_any_call(tmp_path, body, message):
    doc = tmp_path / "app.toml"
    doc.write_text("[[deployment]]\n" + body)
    result = run_xpud("apply", "-f", str(doc), *NOWHERE)
    _one_line_exit_2(result, message)
    assert result.stderr.startswith(f"xpud apply: error: {doc}: "), result.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("deployments:\n  - name: web\n    model: iris\n    replicas: many\n", "replicas must be a whole number"),
        ("deployments:\n  - name: web\n    modle: iris\n", "unknown key 'modle' in deployment 'web' (did you mean"),
        ("deployments:\n  - name: web\n    model: iris\n    labels: [a, b]\n", "label 'a' must look like KEY=VALUE"),
        ("deployments:\n  - just a string\n", "deployment #1 must be a table of keys"),
        ("deployments: [\n", "is not valid YAML"),
        ("deployments: []\n", "holds no deployment"),
    ],
)
def test_bad_yaml_apply_file_is_refused_before_any_call(tmp_path, body, message):
    pytest.importorskip("yaml")
    doc = tmp_path / "app.yaml"
    doc.write_text(body)
    _one_line_exit_2(run_xpud("apply", "-f", str(doc), *NOWHERE), message)


def test_unreadable_or_invalid_toml_apply_file(tmp_path):
    _one_line_exit_2(run_xpud("apply", "-f", str(tmp_path / "none.toml"), *NOWHERE), "cannot read")
    doc = tmp_path / "bad.toml"
    doc.write_text("[[deployment]\n")
    _one_line_exit_2(run_xpud("apply", "-f", str(doc), *NOWHERE), "is not valid TOML")


def test_unrecognized_flag_names_the_subcommand():
    _one_line_exit_2(run_xpud("devices", "--simulate"), "xpud devices: error: unrecognized arguments: --simulate")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1048576", 1 << 20), ("512B", 512), ("2KB", 2000), ("2kb", 2000), ("1.5GB", 1_500_000_000),
     ("2TB", 2 * 10**12), ("2KiB", 2048), ("512MiB", 512 << 20), ("2gib", 2 << 30), ("1.5GiB", 3 << 29),
     ("1TiB", 1 << 40), (" 3 MiB ", 3 << 20)],
)
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2G", "2M", "2k", "2 gigs", "GiB", "-1", "1e9", "2 PiB"])
def test_parse_size_refuses_other_units(text):
    with pytest.raises(ValidationError, match="KiB, MiB, GiB, TiB"):
        parse_size(text)


def test_good_fields_become_the_deployment_sent():
    spec, notes = deployment({"name": "web", "model": "iris:2", "replicas": "3", "device": "gpu",
                              "memory": "128MiB", "priority": 5, "labels": {"rack": "r1", "n": 2}, "zone": "z",
                              "max_batch": 8, "strategy": "spread"})
    assert (spec.name, spec.model, spec.version, spec.replicas, spec.device) == ("web", "iris", "2", 3, "gpu")
    assert (spec.memory_bytes, spec.priority, dict(spec.labels), spec.zone) == (128 << 20, 5, {"rack": "r1", "n": "2"},
                                                                                "z")
    assert (spec.max_batch_size, spec.strategy, notes) == (8, "spread", [])
    spec, _ = deployment({"name": "a", "model": "iris", "traffic": {"1": 90, "2": 10}, "max_inflight": 4})
    assert [(w.version, w.weight) for w in spec.traffic] == [("1", 90), ("2", 10)] and spec.max_inflight == 4
    spec, _ = deployment({"name": "a", "model": "iris", "labels": ["k=v"]})
    assert (spec.replicas, spec.device, spec.strategy, dict(spec.labels)) == (1, "any", "binpack", {"k": "v"})
