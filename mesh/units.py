"""Human-written durations and sizes from config files: "250ms", "2m", "7d", "512MB"."""

from __future__ import annotations

import re

from mesh.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|TB)?", re.IGNORECASE)
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def seconds(value: str | float | int) -> float:
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.fullmatch(value.strip())
    if not m:
        raise ConfigError(f"invalid duration {value!r}: write e.g. '250ms', '30s', '2m', '7d'")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(value.strip())
    if not m:
        raise ConfigError(f"invalid size {value!r}: write e.g. 1048576, '512MB', '4GB'")
    return int(m.group(1)) * _BYTES[(m.group(2) or "B").upper()]
