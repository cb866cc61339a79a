"""THE table of quant formats. Every backend's dispatch is derived from it (DESIGN.md: one qtype table).

Block layouts follow ggml-common.h; `act_q8` is the activation format llama.cpp's CPU backend
quantises x to before its dot product (the type's `vec_dot_type`), used by the `q8` activation mode.
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as G

from .errors import UnsupportedQType


@dataclass(frozen=True)
class QType:
    name: str
    ggml: G               # the GGUF enum
    block: int            # weights per block
    nbytes: int           # bytes per block
    family: str           # float | legacy | kquant | iquant | mx
    act_q8: str           # llama.cpp CPU vec_dot_type: F32 | F16 | BF16 | Q8_0 | Q8_K

    @property
    def id(self) -> int:
        return int(self.ggml)

    def row_bytes(self, n: int) -> int:
        if n % self.block:
            raise ValueError(f"{self.name}: row of {n} is not a multiple of block {self.block}")
        return n // self.block * self.nbytes


_ROWS = [
    QType("F32", G.F32, 1, 4, "float", "F32"),
    QType("F16", G.F16, 1, 2, "float", "F16"),
    QType("BF16", G.BF16, 1, 2, "float", "BF16"),
    QType("Q4_0", G.Q4_0, 32, 18, "legacy", "Q8_0"),
    QType("Q4_1", G.Q4_1, 32, 20, "legacy", "Q8_0"),   # llama.cpp uses Q8_1: same grid as Q8_0
    QType("Q5_0", G.Q5_0, 32, 22, "legacy", "Q8_0"),
    QType("Q5_1", G.Q5_1, 32, 24, "legacy", "Q8_0"),   # Q8_1, same grid
    QType("Q8_0", G.Q8_0, 32, 34, "legacy", "Q8_0"),
    QType("Q2_K", G.Q2_K, 256, 84, "kquant", "Q8_K"),
    QType("Q3_K", G.Q3_K, 256, 110, "kquant", "Q8_K"),
    QType("Q4_K", G.Q4_K, 256, 144, "kquant", "Q8_K"),
    QType("Q5_K", G.Q5_K, 256, 176, "kquant", "Q8_K"),
    QType("Q6_K", G.Q6_K, 256, 210, "kquant", "Q8_K"),
    QType("IQ4_NL", G.IQ4_NL, 32, 18, "iquant", "Q8_0"),
    QType("IQ4_XS", G.IQ4_XS, 256, 136, "iquant", "Q8_K"),
    QType("MXFP4", G.MXFP4, 32, 17, "mx", "Q8_0"),
]

QTYPES: dict[str, QType] = {q.name: q for q in _ROWS}
BY_ID: dict[int, QType] = {q.id: q for q in _ROWS}
ALL = tuple(QTYPES)


def by_name(name: str) -> QType:
    try:
        return QTYPES[name.upper()]
    except KeyError:
        raise UnsupportedQType(name, "<argument>", ALL) from None


def name_of(ggml_type: int) -> str:
    """Name of any GGML type id, also the ones this table lacks (for messages and inspect)."""
    q = BY_ID.get(int(ggml_type))
    if q:
        return q.name
    try:
        return G(int(ggml_type)).name
    except ValueError:
        return f"type{int(ggml_type)}"


class Dispatch:
    """Maps a tensor's qtype to an implementation; built from the table, never hand-listed twice.

    `impl(qtype)` returns what the backend registered for that row. The rows a backend implements
    are exactly the keys given; anything else raises the same UnsupportedQType on every backend.
    """

    def __init__(self, backend: str, impls: dict[str, object]):
        unknown = set(impls) - set(QTYPES)
        if unknown:
            raise ValueError(f"{backend}: not rows of qtypes.py: {sorted(unknown)}")
        self.backend = backend
        self._impls = {QTYPES[n].id: v for n, v in impls.items()}
        self.supported = tuple(n for n in ALL if n in impls)

    def __call__(self, qtype_id: int, tensor: str = "<tensor>"):
        try:
            return self._impls[int(qtype_id)]
        except KeyError:
            raise UnsupportedQType(name_of(qtype_id), tensor, self.supported, self.backend) from None
