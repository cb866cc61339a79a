"""Backends: one file each. `get(name)` builds one; every dispatch comes from qtypes.py."""
from __future__ import annotations

from ..errors import BadArgument


def get(name: str):
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend()
    if name == "oracle":
        from .oracle import OracleBackend
        return OracleBackend()
    if name == "cuda":                      # asked for explicitly: no GPU is an error, not a fallback
        from .cuda import CudaBackend
        return CudaBackend()
    if name == "device":                    # the GPU if there is one, else the labelled emulation
        from .cuda import device_backend
        return device_backend()
    if name == "emulated-cuda":
        from .emulated import EmulatedCudaBackend
        return EmulatedCudaBackend()
    raise BadArgument(f"unknown backend {name!r}; backends: cpu, oracle, cuda, device, emulated-cuda")
