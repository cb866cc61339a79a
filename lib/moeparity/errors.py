"""Typed errors: everything a user can cause is a MoeParityError with one readable line.

The CLI prints str(err) on stderr and exits 2 (DESIGN.md: exit 1 is reserved for "divergence found").
"""
from __future__ import annotations


class MoeParityError(Exception):
    """Base of every error the user can cause (bad file, bad argument, missing device)."""

    exit_code = 2


class ModelFileError(MoeParityError):
    """The file is missing, not GGUF, truncated or internally inconsistent."""


class UnknownArchitecture(MoeParityError):
    def __init__(self, arch: str, known: list[str]):
        super().__init__(f"unsupported architecture {arch!r}; supported: {', '.join(sorted(known))}")
        self.arch = arch


class MissingTensor(MoeParityError):
    def __init__(self, name: str, why: str = ""):
        super().__init__(f"required tensor {name!r} is missing" + (f" ({why})" if why else ""))
        self.tensor = name


class TensorSizeMismatch(ModelFileError):
    """The byte size a tensor occupies does not match its qtype and shape."""


class UnsupportedQType(MoeParityError):
    def __init__(self, qtype: str, tensor: str, supported, backend: str = ""):
        sup = ", ".join(supported)
        who = f" on backend {backend}" if backend else ""
        super().__init__(f"qtype {qtype} of tensor {tensor!r} is not implemented{who}; supported: {sup}")
        self.qtype, self.tensor, self.supported, self.backend = qtype, tensor, tuple(supported), backend


class LayerOutOfRange(MoeParityError):
    pass


class BadArgument(MoeParityError):
    pass


class NoDevice(MoeParityError):
    pass


class DeviceOutOfMemory(MoeParityError):
    pass
