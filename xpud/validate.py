"""A deployment's fields, checked on the client before any call: the same rules for `xpud deploy` flags and
`xpud apply -f` files, and the controller's own (it checks them again; this gives one line and exit 2 first)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from xpud.controller.core import DEVICE_KINDS, STRATEGIES
from xpud.controller.validation import MAX_INFLIGHT, MAX_MEMORY, MAX_REPLICAS, NAME, VERSION
from xpud.proto import admin_pb2 as apb
from xpud.proto.units import ACCEPTED_UNITS, SIZE, SizeError
from xpud.proto.units import parse_size as _size

SIZE_HELP = f"per replica, e.g. 2GiB; units: {ACCEPTED_UNITS}"
INT32_MAX = 2**31 - 1
KEYS = ("name", "model", "replicas", "device", "memory", "priority", "labels", "zone", "max_batch", "strategy",
        "max_inflight", "traffic", "max_unavailable")


class ValidationError(Exception):
    """A value the CLI refuses: the message says what is wrong and what is accepted (exit 2)."""


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912, '2GB' -> 2000000000, '1048576' -> 1048576; anything else is refused."""
    try:
        return _size(text)
    except SizeError as exc:
        raise ValidationError(str(exc)) from None


def size_note(text: str) -> str | None:
    """A note for a size in decimal units, which some read as binary: what it is taken to mean."""
    match = SIZE.match(text)
    if match and match.group(2).lower() in ("kb", "mb", "gb", "tb"):
        value = parse_size(text)
        return f"memory {text.strip()} is read as {value:,} bytes ({value / 2**30:.2f} GiB); " \
               f"write {match.group(1)}{match.group(2)[0].upper()}iB for powers of 1024"
    return None


def _whole(field: str, value: Any, low: int, high: int | None) -> int:
    accepted = f"a whole number {low}..{high}" if high is not None else f"a whole number >= {low}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(f"{field} must be {accepted}, got {value!r}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d+\s*", value):
            raise ValidationError(f"{field} must be {accepted}, got {value!r}")
        value = int(value)
    if value < low or (high is not None and value > high):
        raise ValidationError(f"{field} must be {accepted}, got {value}")
    if value > INT32_MAX:
        raise ValidationError(f"{field} must be at most {INT32_MAX}, got {value}")
    return value


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {value!r}")
    return value


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if _text(field, value) not in choices:
        raise ValidationError(f"{field} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _labels(value: Any) -> dict[str, str]:
    """Labels as a mapping (files) or a list of KEY=VALUE (the repeated --label flag)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise ValidationError(f"label {k!r} must have a string value, got {v!r}")
            out[str(k)] = str(v)
        return out
    if not isinstance(value, list):
        raise ValidationError(f"labels must be a table of KEY = VALUE, got {value!r}")
    out = {}
    for item in value:
        key, sep, text = str(item).partition("=")
        if not sep or not key:
            raise ValidationError(f"label {item!r} must look like KEY=VALUE")
        out[key] = text
    return out


def check_name(value: Any) -> str:
    name = _text("name", value)
    if not NAME.match(name):
        raise ValidationError(f"deployment name {name!r} is not valid: use 1-63 lowercase letters, digits, '-', "
                              "'_', '.', starting and ending with a letter or digit")
    return name


def check_model(value: Any) -> tuple[str, str]:
    model, _, version = _text("model", value).partition(":")
    if not NAME.match(model):
        raise ValidationError(f"model {value!r} is not valid: use NAME[:VERSION], NAME of 1-63 lowercase letters, "
                              "digits, '-', '_', '.'")
    if version and not VERSION.fullmatch(version):
        raise ValidationError(f"model version {version!r} must be a whole number (e.g. {model}:1)")
    return model, version


def unknown_keys(item: Mapping[str, Any], what: str) -> list[str]:
    """Each key a deployment does not have, with the closest one it may have meant."""
    out = []
    for key in sorted(str(k) for k in item if k not in KEYS):
        close = difflib.get_close_matches(key, KEYS, n=1)
        out.append(f"unknown key {key!r} in {what}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return out


def _traffic(value: Any) -> list[apb.VersionWeight]:
    """An apply file's ``traffic = { "1" = 90, "2" = 10 }``: percent per model version (the controller checks
    that they sum to 100 and that each version is pushed)."""
    if not isinstance(value, Mapping) or not value:
        raise ValidationError(f'traffic must be a table of VERSION = PERCENT, e.g. traffic = {{ "1" = 90, "2" = 10 }}, '
                              f"got {value!r}")
    split = [apb.VersionWeight(version=str(v), weight=_whole(f"traffic of version {v}", w, 0, 100))
             for v, w in value.items()]
    if sum(w.weight for w in split) != 100:
        given = " ".join(f"{w.version}={w.weight}" for w in split)
        raise ValidationError(f"traffic weights must sum to 100, not {sum(w.weight for w in split)} ({given})")
    return split


def deployment(fields: Mapping[str, Any]) -> tuple[apb.Deployment, list[str]]:
    """Checked fields -> (the Deployment to send, notes for the user). Raises ValidationError."""
    name = check_name(fields.get("name"))
    if fields.get("model") is None:
        raise ValidationError("a deployment needs a model (NAME[:VERSION])")
    model, version = check_model(fields["model"])
    notes = []
    memory = fields.get("memory", 0)
    if isinstance(memory, bool) or not isinstance(memory, int | str):
        raise ValidationError(f"memory must be a size like 2GiB, got {memory!r}")
    if isinstance(memory, str):
        try:
            note, memory = size_note(memory), parse_size(memory)
        except ValidationError as exc:
            raise ValidationError(f"memory{str(exc).removeprefix('size')}") from None
        if note:
            notes.append(note)
    elif memory < 0:
        raise ValidationError(f"memory must be >= 0 bytes, got {memory}")
    if memory > MAX_MEMORY:
        raise ValidationError(f"memory must be at most 1 PiB per replica, got {memory:,} bytes")
    spec = apb.Deployment(
        name=name, model=model, version=version,
        replicas=_whole("replicas", fields.get("replicas", 1), 0, MAX_REPLICAS),
        device=_choice("device", fields.get("device", "any"), DEVICE_KINDS),
        memory_bytes=memory,
        priority=_whole("priority", fields.get("priority", 0), 0, None),
        labels=_labels(fields.get("labels", {})),
        zone=_text("zone", fields.get("zone", "")),
        max_batch_size=_whole("max_batch", fields.get("max_batch", 0), 0, None),
        strategy=_choice("strategy", fields.get("strategy", "binpack"), STRATEGIES),
        max_inflight=_whole("max_inflight", fields.get("max_inflight", 0), 0, MAX_INFLIGHT),
        traffic=_traffic(fields["traffic"]) if "traffic" in fields else [])
    if fields.get("max_unavailable") is not None:  # unset: the controller's default (0 where memory allows, else 1)
        spec.max_unavailable = _whole("max_unavailable", fields["max_unavailable"], 0, MAX_REPLICAS)
    return spec, notes
