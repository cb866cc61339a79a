"""Model / Layer / QTensor over gguf.GGUFReader (memory-mapped: only the header is parsed on open,
tensor bytes are touched when a byte range is read).

GGUF order: ne0 is the contiguous (input) dimension. A 2-D weight is [ne0=n_in, ne1=n_out]; an
expert tensor is [n_in, n_out, n_expert] and expert e is one contiguous byte range.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType

from . import qtypes
from .archs import ARCHS, GATING_FUNC, Arch
from .errors import (LayerOutOfRange, MissingTensor, ModelFileError, TensorSizeMismatch,
                     UnknownArchitecture)

GGUF_MAGIC = b"GGUF"

# FFN roles a layer may have, in the order inspect shows them
ROLES = ("ffn_norm", "router", "router_bias", "exp_probs_b", "gate_exps", "up_exps", "down_exps",
         "gate_exps_bias", "up_exps_bias", "down_exps_bias",
         "gate_shexp", "up_shexp", "down_shexp", "shexp_gate",
         "gate", "up", "down")

_ROLE_TENSOR = {
    "router": "ffn_gate_inp.weight", "router_bias": "ffn_gate_inp.bias", "exp_probs_b": "exp_probs_b.bias",
    "gate_exps": "ffn_gate_exps.weight", "up_exps": "ffn_up_exps.weight", "down_exps": "ffn_down_exps.weight",
    "gate_exps_bias": "ffn_gate_exps.bias", "up_exps_bias": "ffn_up_exps.bias",
    "down_exps_bias": "ffn_down_exps.bias",
    "gate_shexp": "ffn_gate_shexp.weight", "up_shexp": "ffn_up_shexp.weight",
    "down_shexp": "ffn_down_shexp.weight", "shexp_gate": "ffn_gate_inp_shexp.weight",
    "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
}


class _HeaderReader(GGUFReader):
    """GGUFReader that steps over long metadata arrays instead of building one numpy view per item.

    A real Qwen3 GGUF carries ~150k tokenizer strings and ~150k merges; gguf-py parses each into
    its own array (seconds). Here a long string array is walked with struct (its values are not
    kept: `Model.metadata` has no use for the tokenizer) and a long scalar array is one view.
    """

    LONG = 256

    def _get_field_parts(self, orig_offs, raw_type):
        if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        n = int(alen[0])
        if n <= self.LONG:
            return super()._get_field_parts(orig_offs, raw_type)
        itype = GGUFValueType(int(raw_itype[0]))
        offs = orig_offs + 12
        if itype == GGUFValueType.STRING:
            buf = self.data
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(n):
                offs += 8 + unpack(buf, offs)[0]
            return offs - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY, itype]
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:
            return super()._get_field_parts(orig_offs, raw_type)
        vals = self._get(offs, nptype, n)
        return 12 + int(vals.nbytes), [raw_itype, alen, vals], [2], [GGUFValueType.ARRAY, itype]


@dataclass(frozen=True)
class QTensor:
    """One tensor: name, qtype, logical shape (GGUF ne order) and where its bytes are."""
    name: str
    type_id: int
    ne: tuple[int, ...]
    offset: int                     # absolute file offset of the first byte
    nbytes: int
    _mm: np.memmap = field(repr=False, compare=False)

    @classmethod
    def from_weights(cls, name: str, w: np.ndarray, qtype: str) -> "QTensor":
        """An in-memory tensor from float weights (n_expert, n_out, n_in) or (n_out, n_in): tests, benches."""
        from .quant import quantize
        w = np.asarray(w, np.float32)
        raw = quantize(w, qtype).reshape(-1)
        ne = tuple(reversed(w.shape))
        return cls(name, qtypes.QTYPES[qtype].id, ne, 0, raw.size, raw)

    @property
    def qtype_name(self) -> str:
        return qtypes.name_of(self.type_id)

    @property
    def qtype(self) -> qtypes.QType:
        """The table row; tensors of types outside the table still open and inspect fine."""
        return qtypes.BY_ID.get(self.type_id)

    @property
    def n_in(self) -> int:
        return self.ne[0]

    @property
    def n_out(self) -> int:
        return self.ne[1] if len(self.ne) > 1 else 1

    @property
    def n_expert(self) -> int:
        return self.ne[2] if len(self.ne) > 2 else 1

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type_id]
        return self.ne[0] // block * size

    @property
    def expert_bytes(self) -> int:
        return self.row_bytes * self.n_out

    def raw(self) -> np.ndarray:
        """All bytes, shape (…, n_out, row_bytes) — a view into the mmap, nothing copied."""
        shape = tuple(reversed(self.ne[1:])) + (self.row_bytes,)
        return self._mm[self.offset:self.offset + self.nbytes].reshape(shape)

    def expert(self, e: int) -> np.ndarray:
        """Expert e's rows as (n_out, row_bytes) bytes: one contiguous slice of the file."""
        if not 0 <= e < self.n_expert:
            raise LayerOutOfRange(f"expert {e} out of range 0..{self.n_expert - 1} in {self.name}")
        start = self.offset + e * self.expert_bytes
        return self._mm[start:start + self.expert_bytes].reshape(self.n_out, self.row_bytes)

    def rows(self, start: int, stop: int, expert: int = 0) -> np.ndarray:
        if not 0 <= start <= stop <= self.n_out:
            raise LayerOutOfRange(f"rows {start}:{stop} out of range 0..{self.n_out} in {self.name}")
        return self.expert(expert)[start:stop]

    def f32(self) -> np.ndarray:
        """Float values of a small float tensor (norms, biases, F32 routers), GGUF shape reversed."""
        from .quant import dequantize
        qt = self.qtype
        if qt is None:
            raise ModelFileError(f"{self.name}: cannot read values of type {self.qtype_name}")
        return dequantize(self.raw(), qt)


@dataclass
class HParams:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_ff_exp: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_shexp: int
    n_leading_dense: int
    norm_topk: bool
    gating: str
    expert_weights_scale: float
    rms_eps: float
    act: str
    shared_gate: bool
    swiglu_alpha: float
    swiglu_limit: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Layer:
    """One block's FFN tensors by role. Nothing is dequantised to build it."""

    def __init__(self, model: "Model", index: int):
        self.model, self.index = model, index
        self.tensors: dict[str, QTensor] = {}
        for role, suffix in _ROLE_TENSOR.items():
            t = model.tensors.get(f"blk.{index}.{suffix}")
            if t is not None:
                self.tensors[role] = t
        norm = model.tensors.get(f"blk.{index}.{model.arch.ffn_norm}.weight")
        if norm is not None:
            self.tensors["ffn_norm"] = norm

    @property
    def is_moe(self) -> bool:
        return "router" in self.tensors

    def __getitem__(self, role: str) -> QTensor:
        try:
            return self.tensors[role]
        except KeyError:
            raise MissingTensor(f"blk.{self.index}.{_ROLE_TENSOR.get(role, role)}",
                                f"layer {self.index} of {self.model.path}") from None

    def get(self, role: str):
        return self.tensors.get(role)

    def validate(self):
        """A layer must have a complete FFN: routed experts, or a dense gate/up/down."""
        need = ("router", "gate_exps", "up_exps", "down_exps") if self.is_moe else ("gate", "up", "down")
        if not self.is_moe and "up" not in self.tensors and self.model.hparams.n_expert > 0 \
                and self.index >= self.model.hparams.n_leading_dense:
            need = ("router",)
        for r in need:
            self[r]


class Model:
    """A GGUF model. `Model.open(path)` parses the header only."""

    def __init__(self, path: str, reader: GGUFReader):
        self.path = path
        self.reader = reader
        self.file_size = os.path.getsize(path)
        self.metadata = {f.name: _field_value(f) for f in reader.fields.values()
                         if not f.name.startswith("tokenizer.ggml.")}
        self.tensors: dict[str, QTensor] = {}
        mm = reader.data
        for t in reader.tensors:
            ne = tuple(int(x) for x in t.shape)
            tid = int(t.tensor_type)
            block, size = GGML_QUANT_SIZES[t.tensor_type]
            if ne[0] % block:
                raise TensorSizeMismatch(
                    f"tensor {t.name}: row of {ne[0]} is not a multiple of {qtypes.name_of(tid)} block {block}")
            expect = int(np.prod(ne)) // block * size
            if t.n_bytes != expect:
                raise TensorSizeMismatch(f"tensor {t.name}: {t.n_bytes} bytes, "
                                         f"{qtypes.name_of(tid)}{list(ne)} needs {expect}")
            if t.data_offset + expect > self.file_size:
                raise ModelFileError(f"{path}: truncated: tensor {t.name} ends at byte "
                                     f"{t.data_offset + expect}, file has {self.file_size}")
            self.tensors[t.name] = QTensor(t.name, tid, ne, t.data_offset, expect, mm)
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:]):
            if a.offset + a.nbytes > b.offset:
                raise TensorSizeMismatch(
                    f"tensor {a.name}: {a.qtype_name}{list(a.ne)} needs {a.nbytes} bytes but only "
                    f"{b.offset - a.offset} lie before the next tensor {b.name}")
        arch_name = self.metadata.get("general.architecture")
        if arch_name not in ARCHS:
            raise UnknownArchitecture(str(arch_name), list(ARCHS))
        self.arch: Arch = ARCHS[arch_name]
        self.hparams = self._hparams()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Model":
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ModelFileError(f"{path}: no such file")
        if os.path.isdir(path):
            raise ModelFileError(f"{path}: is a directory, not a GGUF file")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        try:
            reader = _HeaderReader(path, "r")
        except (ValueError, IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError,
                struct.error) as e:
            if "GGMLQuantizationType" in str(e):
                raise ModelFileError(f"{path}: a tensor has a type this gguf-py does not know ({e}); "
                                     f"the file may be newer than the installed gguf package") from None
            raise ModelFileError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None
        return cls(path, reader)

    # ------------------------------------------------------------------ metadata
    def key(self, suffix: str, default=None):
        return self.metadata.get(f"{self.arch.name}.{suffix}", default)

    def _hparams(self) -> HParams:
        a = self.arch
        n_layer = self.key("block_count")
        n_embd = self.key("embedding_length")
        if n_layer is None or n_embd is None:
            raise ModelFileError(f"{self.path}: metadata lacks {a.name}.block_count/embedding_length")
        n_ff = self.key("feed_forward_length", 0)
        if isinstance(n_ff, list):            # per-layer n_ff (some dense models)
            n_ff = max(n_ff)
        n_expert = self.key("expert_count", 0) if a.moe else 0
        gating = a.gating
        g = self.key("expert_gating_func")
        if g is not None:
            gating = GATING_FUNC.get(int(g), gating)
        n_ff_exp = self.key("expert_feed_forward_length", 0)
        if n_expert and not n_ff_exp:
            n_ff_exp = n_ff                     # mixtral-style files carry only feed_forward_length
        n_used = int(self.key("expert_used_count", 0) if n_expert else 0)
        for what, v, lo, hi in (("block_count", n_layer, 1, 4096), ("embedding_length", n_embd, 1, 1 << 20),
                                ("expert_count", n_expert, 0, 1 << 16), ("expert_used_count", n_used, 0, n_expert)):
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ModelFileError(f"{self.path}: implausible {a.name}.{what} = {v!r} (expected {lo}..{hi})")
        if n_expert and n_used < 1:
            raise ModelFileError(f"{self.path}: {a.name}.expert_used_count missing or 0 for a MoE model")
        return HParams(
            arch=a.name, n_layer=int(n_layer), n_embd=int(n_embd), n_ff=int(n_ff), n_ff_exp=int(n_ff_exp),
            n_expert=int(n_expert), n_expert_used=n_used,
            n_expert_shared=int(self.key("expert_shared_count", 0)),
            n_ff_shexp=int(self.key("expert_shared_feed_forward_length", 0)),
            n_leading_dense=int(self.key("leading_dense_block_count", 0)),
            norm_topk=bool(self.key("expert_weights_norm", a.norm_topk)),
            gating=gating,
            expert_weights_scale=float(self.key("expert_weights_scale", 0.0) or 1.0),
            rms_eps=float(f"{self.key('attention.layer_norm_rms_epsilon', a.rms_eps):.7g}"),
            act=a.act, shared_gate=a.shared_gate,
            swiglu_alpha=a.swiglu_alpha,
            swiglu_limit=float(self.key("swiglu_clamp_exp", a.swiglu_limit) if not isinstance(
                self.key("swiglu_clamp_exp"), list) else a.swiglu_limit),
        )

    # ------------------------------------------------------------------ layers
    @cached_property
    def layers(self) -> list[Layer]:
        return [Layer(self, i) for i in range(self.hparams.n_layer)]

    def layer(self, i: int) -> Layer:
        n = self.hparams.n_layer
        if not 0 <= i < n:
            raise LayerOutOfRange(f"layer {i} out of range: {self.path} has layers 0..{n - 1}")
        lay = self.layers[i]
        lay.validate()
        return lay

    def qtype_map(self) -> list[dict[str, str]]:
        """Per layer: role → qtype name. Header only."""
        return [{r: t.qtype_name for r, t in lay.tensors.items()} for lay in self.layers]

    def qtype_totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors.values():
            d = out.setdefault(t.qtype_name, {"tensors": 0, "bytes": 0})
            d["tensors"] += 1
            d["bytes"] += t.nbytes
        return out


def _field_value(f):
    """Scalar / string / array value of a metadata field (arrays of strings are decoded lazily)."""
    if not f.types:
        return None
    t0 = f.types[0]
    try:
        if t0 == GGUFValueType.ARRAY:
            if len(f.types) > 1 and f.types[1] == GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
            return [v for i in f.data for v in f.parts[i].tolist()]
        if t0 == GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        v = f.parts[f.data[0]][0]
        return v.item()
    except (IndexError, UnicodeDecodeError):
        return None


LAYER_RE = re.compile(r"^blk\.(\d+)\.")
