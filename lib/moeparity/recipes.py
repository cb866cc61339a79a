"""Quantisation recipes: which qtype each tensor of a model gets.

`q4_k_m` follows llama.cpp's llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_Q4_K_M (src/llama-quant.cpp):
ffn_down* and attn_v get Q6_K on `use_more_bits` layers, output gets Q6_K, 8-expert models get
Q8_0 attn_k/attn_v and Q5_K attn_output, routers/norms/1-D tensors stay F32, and a K-quant whose
row (ne0) is not a multiple of 256 falls back (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→Q4_0,
IQ4_XS→IQ4_NL; F16 if even that does not divide).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from . import qtypes
from .errors import BadArgument

FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0",
            "IQ4_XS": "IQ4_NL"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    ne: tuple[int, ...]


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quantizable(spec: TensorSpec) -> bool:
    """llama.cpp's tensor_allows_quantization, for the tensors our fixtures contain."""
    n = spec.name
    return (len(spec.ne) >= 2 and n.endswith("weight") and "_norm.weight" not in n
            and "ffn_gate_inp" not in n)


def fallback(qt: str, ncols: int) -> str:
    q = qtypes.QTYPES[qt]
    if ncols % q.block == 0:
        return qt
    if qt not in FALLBACK:
        raise BadArgument(f"{qt} cannot hold rows of {ncols} and has no llama.cpp fallback")
    fb = FALLBACK[qt]
    return fb if ncols % qtypes.QTYPES[fb].block == 0 else "F16"


def q4_k_m(specs: list[TensorSpec], n_expert: int) -> dict[str, str]:
    n_attn_v = sum("attn_v.weight" in s.name for s in specs)
    n_down = sum("ffn_down" in s.name for s in specs)
    i_attn_v = i_down = 0
    out = {}
    for s in specs:
        if not quantizable(s):
            out[s.name] = "F32"
            continue
        t = "Q4_K"
        if s.name == "output.weight":
            t = "Q6_K" if s.ne[0] % 256 == 0 else "Q8_0"
        elif "attn_v.weight" in s.name:
            if use_more_bits(i_attn_v, n_attn_v):
                t = "Q6_K"
            if n_expert == 8:
                t = "Q8_0"
            i_attn_v += 1
        elif "attn_k.weight" in s.name:
            if n_expert == 8:
                t = "Q8_0"
        elif "ffn_down" in s.name:
            i_layer = i_down
            if n_expert > 1:                         # llama.cpp parses the block index for MoE models
                i_layer = int(_LAYER.match(s.name).group(1))
            if use_more_bits(i_layer, n_down):
                t = "Q6_K"
            i_down += 1
        elif "attn_output.weight" in s.name:
            if n_expert == 8:
                t = "Q5_K"
        out[s.name] = fallback(t, s.ne[0])
    return out


def mxfp4_moe(specs: list[TensorSpec], n_expert: int) -> dict[str, str]:
    """LLAMA_FTYPE_MOSTLY_MXFP4_MOE: 3-D expert tensors MXFP4, other weights Q8_0."""
    out = {}
    for s in specs:
        if not quantizable(s):
            out[s.name] = "F32"
        elif len(s.ne) == 3 and s.ne[2] > 1:
            out[s.name] = "MXFP4"
        else:
            out[s.name] = fallback("Q8_0", s.ne[0]) if s.ne[0] % 32 == 0 else "F16"
    return out


def uniform(qt: str):
    qt = qtypes.by_name(qt).name

    def recipe(specs, n_expert):
        return {s.name: (fallback(qt, s.ne[0]) if quantizable(s) and qt in FALLBACK
                         else qt if quantizable(s) else "F32") for s in specs}
    return recipe


def from_yaml(path: str):
    """YAML: `default: Q4_K` plus `rules: [{match: REGEX, qtype: Q6_K}, …]` (first match wins)."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError as e:
        raise BadArgument(f"recipe map {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadArgument(f"recipe map {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise BadArgument(f"recipe map {path}: expected a mapping with 'default' and/or 'rules'")
    default = qtypes.by_name(str(doc.get("default", "Q4_K"))).name
    rules = []
    for r in doc.get("rules", []):
        try:
            rules.append((re.compile(r["match"]), qtypes.by_name(str(r["qtype"])).name))
        except (KeyError, TypeError, re.error) as e:
            raise BadArgument(f"recipe map {path}: bad rule {r!r} ({e})") from None

    def recipe(specs, n_expert):
        out = {}
        for s in specs:
            if not quantizable(s):
                out[s.name] = "F32"
                continue
            qt = next((q for rx, q in rules if rx.search(s.name)), default)
            out[s.name] = fallback(qt, s.ne[0]) if s.ne[0] % qtypes.QTYPES[qt].block else qt
        return out
    return recipe


def get(spec: str):
    if spec == "q4_k_m":
        return q4_k_m
    if spec == "mxfp4_moe":
        return mxfp4_moe
    if spec.startswith("uniform:"):
        return uniform(spec.split(":", 1)[1])
    if spec.endswith((".yaml", ".yml")):
        return from_yaml(spec)
    raise BadArgument(f"unknown recipe {spec!r}: use q4_k_m, mxfp4_moe, uniform:QTYPE or a .yaml map")
