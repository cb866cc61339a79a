"""The Backend protocol. A backend computes y = W·x for quantized weights; everything above it
(moe.py) is backend-agnostic, so the only difference between two sides of a comparison is this.

Weights arrive as a `QTensor` (or its expert slices) together with its qtype id: the kernel is
chosen from the tensor's own qtype through a `Dispatch` built from qtypes.py, so a kernel of one
qtype can never be handed another qtype's bytes.
"""
from __future__ import annotations

import numpy as np

from ..errors import BadArgument
from ..qtypes import QTYPES, Dispatch


class Backend:
    name: str = "?"
    label: str = "?"                      # what outputs show (e.g. "emulated-cuda (no GPU)")
    act_modes: tuple[str, ...] = ("f32",)
    dtype = np.float32                    # precision of the glue around matvec (moe.py): engines are float32
    implements: tuple[str, ...] = tuple(QTYPES)   # rows of qtypes.py this backend has kernels for

    def __init__(self):
        # the dispatch is derived from the table and the declaration above, never hand-listed
        self.dispatch = Dispatch(self.name, {q: q for q in self.implements})

    def check_act(self, act: str):
        if act not in self.act_modes:
            raise BadArgument(f"backend {self.name} has activation modes {self.act_modes}, not {act!r}")

    def supports(self, qtype_name: str) -> bool:
        return qtype_name in self.dispatch.supported

    # --- the one operation ---------------------------------------------------------------------
    def matvec(self, tensor, x: np.ndarray, expert: int = 0, act: str = "f32") -> np.ndarray:
        """y[t] = W_expert · x[t]  for x (T, n_in) → (T, n_out) float32 (float64 for the oracle)."""
        x = np.asarray(x, np.float32).reshape(-1, tensor.n_in)
        ids = np.full((x.shape[0], 1), expert, np.int64)
        return self.moe_matvec(tensor, ids, x, act)[:, 0]

    def moe_matvec(self, tensor, ids: np.ndarray, x: np.ndarray, act: str = "f32") -> np.ndarray:
        """Selected experts of every token in one call.

        ids (T, k) expert ids; x (T, n_in) shared by a token's k experts (gate/up) or (T, k, n_in)
        one per slot (down). Returns (T, k, n_out).
        """
        raise NotImplementedError


def check_shapes(tensor, ids, x):
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 2:
        raise BadArgument(f"expert ids must be (tokens, k), got shape {ids.shape}")
    T, k = ids.shape
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = np.broadcast_to(x[:, None, :], (x.shape[0], k, x.shape[1]))
    if x.shape[:2] != (T, k) or x.shape[2] != tensor.n_in:
        raise BadArgument(f"{tensor.name}: x of shape {x.shape} does not fit ids {ids.shape} "
                          f"and n_in={tensor.n_in}")
    if ids.size and (ids.min() < 0 or ids.max() >= tensor.n_expert):
        raise BadArgument(f"{tensor.name}: expert id out of range 0..{tensor.n_expert - 1}")
    return ids, x


def all_rows() -> tuple[str, ...]:
    return tuple(QTYPES)
