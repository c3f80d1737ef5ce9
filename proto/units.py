"""Sizes as people write them ('512MiB', '2GB', '1048576'): one parser for flags, apply files and config files."""

from __future__ import annotations

import re

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
         "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
ACCEPTED_UNITS = "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024); a bare number is bytes"


class SizeError(ValueError):
    """A size that is not a number with one of the accepted units."""


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912, '2GB' -> 2000000000, '1048576' -> 1048576; anything else is refused."""
    match = SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS:
        raise SizeError(f"size {text!r} is not understood: use a number with one of {ACCEPTED_UNITS}")
    return int(float(match.group(1)) * UNITS[unit])
