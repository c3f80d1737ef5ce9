"""A fuzz test over `xpud apply -f` documents (TOML and YAML): every document either becomes deployments the
controller's own rules accept, or is refused with one ValidationError line; nothing else escapes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpud.admin_cli import load_document
from xpud.controller.admin import spec_of
from xpud.controller.validation import check_placement, check_spec
from xpud.validate import KEYS, ValidationError

PLAUSIBLE = ["2GiB", "2GB", "512", "-1", "0", "many", "1e3", "1.5GiB", "99999999999999999999TB", "gpu", "cpu", "any",
             "tpu", "binpack", "spread", "web", "m:1", "m:x", "M", "", " 3 ", "a=b", "z1", "10G"]
SCALARS = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12), st.booleans(),
                    st.sampled_from(PLAUSIBLE))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(["modle", "replica", "mem"]), st.text(max_size=8))
DEPLOYMENT = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["web", "a", "x" * 64, "Web", "web-1"]), SCALARS),
     "model": st.one_of(st.sampled_from(["iris", "iris:1", "iris:0123456789", "iris:"]), SCALARS)},
    optional={k: VALUES for k in KEYS if k not in ("name", "model")}) | st.dictionaries(KEY, VALUES, max_size=6)
DOCUMENT = st.lists(DEPLOYMENT, min_size=0, max_size=3)
CASES = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, or an invalid one that the parser must refuse cleanly
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(doc: list[dict[str, Any]]) -> str:
    return "".join("[[deployment]]\n" + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items())
                   for d in doc)


def _check(path: Path) -> None:
    try:
        specs = load_document(str(path))
    except ValidationError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return
    for deployment, notes in specs:
        deployment.SerializeToString()  # every field fits its wire type
        spec = spec_of(deployment)
        check_spec(spec)  # what the CLI accepts, the controller accepts
        check_placement(spec)
        assert 0 <= spec.replicas and spec.memory_bytes >= 0 and all("\n" not in n for n in notes)


@CASES
@given(doc=DOCUMENT)
def test_fuzzed_toml_documents_give_deployments_or_one_line(tmp_path: Path, doc: list[dict[str, Any]]) -> None:
    path = tmp_path / "app.toml"
    path.write_text(_toml(doc), encoding="utf-8", errors="surrogatepass")
    _check(path)


@CASES
@given(doc=DOCUMENT, shape=st.sampled_from(["list", "mapping", "single"]))
def test_fuzzed_yaml_documents_give_deployments_or_one_line(tmp_path: Path, doc: list[dict[str, Any]],
                                                            shape: str) -> None:
    body: Any = doc if shape == "list" else {"deployments": doc} if shape == "mapping" else (doc[0] if doc else {})
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    _check(path)


@pytest.mark.parametrize("memory", ["99999999999999999999TB", 2**70])
def test_a_memory_too_large_for_the_wire_is_refused(tmp_path: Path, memory: Any) -> None:
    path = tmp_path / "app.toml"
    path.write_text(_toml([{"name": "web", "model": "iris", "memory": memory}]))
    with pytest.raises(ValidationError, match="memory"):
        load_document(str(path))
