"""What this machine's processor can do, and the `--precision` setting: no torch, no Ray.

The settings dataclasses import this (the CLI builds its options from them without loading
torch); `raeflow.models.precision` applies the decision to a model where it runs.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from raeflow.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
"""Values of `--precision`."""

PRECISION_NAMES = {"bf16": "bf16 autocast", "fp32": "float32"}
"""How summaries name the precision a model ran in (the decided one: never `auto`)."""

NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""x86 CPU flags (as Linux names them in /proc/cpuinfo) of native bf16 matrix maths."""

ARM_CPU_FLAGS = ("bf16",)
"""The same on 64-bit ARM (Linux `Features`: the BFDOT/BFMMLA instructions)."""


def check_precision(value: str) -> str:
    """`value` if it is one of `PRECISIONS`, else a one-line `ConfigError` listing them."""
    if value not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports for this machine (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX-512-BF16; ARM BF16)."""
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return any(flag in flags for flag in ARM_CPU_FLAGS)
    return any(flag in flags for flag in NATIVE_CPU_FLAGS)


def cpu_description() -> str:
    """The CPU's model name and its bf16 units, for training records and benchmark tables."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    units = [flag for flag in (*NATIVE_CPU_FLAGS, "amx_tile") if flag in cpu_flags()]
    return f"{name} ({', '.join(units) if units else 'no native bf16'})"
