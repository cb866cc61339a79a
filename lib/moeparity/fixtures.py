"""Synthetic GGUF builder: realistic seeded weights, the metadata keys llama.cpp writes, quantised
by a recipe (recipes.py). Same preset + recipe + seed ⇒ same bytes.

Weights look trained rather than uniform: per-row gains (log-normal), a few outlier input columns
(×6–12, so Q4_K scales and mins use their high bits), heavy-ish tails (Student-t), norms near 1.
Tensors are generated and written one expert at a time, so a multi-GB fixture never sits in memory.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace

import numpy as np
from gguf import GGUFWriter

from . import qtypes, recipes
from .errors import BadArgument
from .quant import quantize
from .recipes import TensorSpec

DEFAULT_DIR = os.path.join("data", "fixtures")


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int = 0                  # dense FFN width (dense archs, deepseek2 leading dense layers)
    n_ff_exp: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_shexp: int = 0
    n_leading_dense: int = 0
    attention: bool = True         # write attn_q/k/v/output + embeddings, so recipes see a whole model
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_vocab: int = 512
    recipe: str = "q4_k_m"
    extra_keys: tuple = ()         # (suffix, value) pairs written as {arch}.suffix


PRESETS: dict[str, Preset] = {p.name: p for p in [
    # default fixture: qwen3moe under the Q4_K_M recipe; 8 layers ⇒ Q6_K downs on 0,3,6,7, Q4_K on 1,2,4,5
    Preset("tiny", "qwen3moe", 8, 256, n_ff_exp=256, n_expert=16, n_expert_used=4),
    # real Qwen3-30B-A3B FFN dims (48 layers, hidden 2048, expert FFN 768, top-8) with fewer experts
    Preset("qwen3-30b-a3b-dims", "qwen3moe", 48, 2048, n_ff_exp=768, n_expert=16, n_expert_used=8,
           attention=False, n_head=32, n_head_kv=4, head_dim=128),
    # row sizes that are not multiples of 256 exercise llama.cpp's K-quant fallback
    Preset("tiny-odd", "qwen3moe", 4, 256, n_ff_exp=96, n_expert=8, n_expert_used=2),
    Preset("tiny-qwen2moe", "qwen2moe", 4, 256, n_ff_exp=256, n_expert=8, n_expert_used=2,
           n_expert_shared=1, n_ff_shexp=512),
    Preset("tiny-mixtral", "llama", 4, 256, n_ff=256, n_ff_exp=256, n_expert=8, n_expert_used=2),
    Preset("tiny-olmoe", "olmoe", 4, 256, n_ff_exp=256, n_expert=8, n_expert_used=2),
    Preset("tiny-deepseek2", "deepseek2", 4, 256, n_ff=512, n_ff_exp=256, n_expert=8, n_expert_used=2,
           n_expert_shared=2, n_leading_dense=1,
           extra_keys=(("expert_gating_func", 2), ("expert_weights_norm", True),
                       ("expert_weights_scale", 2.5))),
    Preset("tiny-gpt-oss", "gpt-oss", 4, 256, n_ff_exp=256, n_expert=8, n_expert_used=2,
           recipe="mxfp4_moe"),
    Preset("tiny-granitemoe", "granitemoe", 4, 256, n_ff_exp=256, n_expert=8, n_expert_used=2),
    Preset("tiny-llama", "llama", 4, 256, n_ff=512),
    Preset("tiny-qwen2", "qwen2", 4, 256, n_ff=512),
    Preset("tiny-qwen3", "qwen3", 4, 256, n_ff=512),
    Preset("tiny-gemma3", "gemma3", 4, 256, n_ff=512),
]}


def _specs(p: Preset) -> list[TensorSpec]:
    """Tensor list in llama.cpp's order. ne is GGUF order: (n_in, n_out[, n_expert])."""
    d, s = p.n_embd, []
    if p.attention:
        s.append(TensorSpec("token_embd.weight", (d, p.n_vocab)))
    for i in range(p.n_layer):
        b = f"blk.{i}."
        if p.attention:
            q, kv = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
            s += [TensorSpec(b + "attn_norm.weight", (d,)), TensorSpec(b + "attn_q.weight", (d, q)),
                  TensorSpec(b + "attn_k.weight", (d, kv)), TensorSpec(b + "attn_v.weight", (d, kv)),
                  TensorSpec(b + "attn_output.weight", (q, d))]
        norm = "post_attention_norm" if p.arch == "gpt-oss" else "ffn_norm"
        s.append(TensorSpec(b + f"{norm}.weight", (d,)))
        if p.n_expert == 0 or i < p.n_leading_dense:
            f = p.n_ff
            s += [TensorSpec(b + "ffn_gate.weight", (d, f)), TensorSpec(b + "ffn_up.weight", (d, f)),
                  TensorSpec(b + "ffn_down.weight", (f, d))]
            continue
        e, f = p.n_expert, p.n_ff_exp
        s.append(TensorSpec(b + "ffn_gate_inp.weight", (d, e)))
        if p.arch == "gpt-oss":
            s.append(TensorSpec(b + "ffn_gate_inp.bias", (e,)))
        if p.arch == "deepseek2":
            s.append(TensorSpec(b + "exp_probs_b.bias", (e,)))
        s += [TensorSpec(b + "ffn_gate_exps.weight", (d, f, e)), TensorSpec(b + "ffn_up_exps.weight", (d, f, e)),
              TensorSpec(b + "ffn_down_exps.weight", (f, d, e))]
        if p.arch == "gpt-oss":
            s += [TensorSpec(b + "ffn_gate_exps.bias", (f, e)), TensorSpec(b + "ffn_up_exps.bias", (f, e)),
                  TensorSpec(b + "ffn_down_exps.bias", (d, e))]
        if p.n_expert_shared:
            fs = p.n_ff_shexp or p.n_ff_exp * p.n_expert_shared
            if p.arch == "qwen2moe":
                s.append(TensorSpec(b + "ffn_gate_inp_shexp.weight", (d,)))
            s += [TensorSpec(b + "ffn_gate_shexp.weight", (d, fs)), TensorSpec(b + "ffn_up_shexp.weight", (d, fs)),
                  TensorSpec(b + "ffn_down_shexp.weight", (fs, d))]
    if p.attention:
        s += [TensorSpec("output_norm.weight", (d,)), TensorSpec("output.weight", (d, p.n_vocab))]
    return s


def _rng(seed: int, name: str, part: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), part])


def _weights(rng, n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 that looks trained: t-tails, row gains, outlier input columns."""
    w = rng.standard_t(5, size=(n_out, n_in)).astype(np.float32)
    w *= np.float32(0.6 / np.sqrt(n_in))
    w *= rng.lognormal(0.0, 0.25, size=(n_out, 1)).astype(np.float32)
    cols = rng.choice(n_in, size=max(1, n_in // 128), replace=False)
    w[:, cols] *= rng.uniform(6, 12, size=len(cols)).astype(np.float32)
    return w


def _values(spec: TensorSpec, seed: int, part: int) -> np.ndarray:
    """Float values of one tensor, or of expert `part` of an expert tensor; numpy order (n_out, n_in)."""
    rng = _rng(seed, spec.name, part)
    n = spec.name
    if len(spec.ne) == 1 or n.endswith(".bias"):
        size = spec.ne[0]
        if n.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)
        if "exp_probs_b" in n:
            return (0.05 * rng.standard_normal(size)).astype(np.float32)
        if "gate_inp_shexp" in n:
            return (rng.standard_normal(size) / np.sqrt(size)).astype(np.float32)
        return (0.02 * rng.standard_normal(size)).astype(np.float32)       # biases
    n_in, n_out = spec.ne[0], spec.ne[1]
    if "ffn_gate_inp" in n:                                                # router: F32, wider spread
        return (rng.standard_normal((n_out, n_in)) * (1.5 / np.sqrt(n_in))).astype(np.float32)
    return _weights(rng, n_out, n_in)


def _bias_rows(spec: TensorSpec, seed: int) -> np.ndarray:
    """2-D bias tensors ([n, n_expert]) are generated per expert like weights."""
    return np.stack([_values(TensorSpec(spec.name, (spec.ne[0],)), seed, e) for e in range(spec.ne[1])])


def build(path: str, preset: str | Preset = "tiny", recipe: str | None = None, n_layer: int | None = None,
          seed: int = 0, n_expert: int | None = None) -> str:
    """Write a fixture GGUF to `path` (atomically: a temp file renamed on success)."""
    p = PRESETS.get(preset) if isinstance(preset, str) else preset
    if p is None:
        raise BadArgument(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    if n_layer is not None:
        if n_layer < 1:
            raise BadArgument("--layers must be ≥ 1")
        p = replace(p, n_layer=n_layer, n_leading_dense=min(p.n_leading_dense, n_layer))
    if n_expert is not None:
        if p.n_expert == 0 or n_expert < 1:
            raise BadArgument("--experts needs a MoE preset and a value ≥ 1")
        p = replace(p, n_expert=n_expert, n_expert_used=min(p.n_expert_used, n_expert))
    specs = _specs(p)
    assign = recipes.get(recipe or p.recipe)(specs, p.n_expert)

    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    w = GGUFWriter(tmp, p.arch)
    _metadata(w, p, recipe or p.recipe, seed)
    for s in specs:
        qt = qtypes.QTYPES[assign[s.name]]
        shape = tuple(reversed(s.ne[1:])) + (qt.row_bytes(s.ne[0]),)
        w.add_tensor_info(s.name, shape, np.dtype(np.uint8), int(np.prod(shape)), raw_dtype=qt.ggml)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for s in specs:
            qt = qtypes.QTYPES[assign[s.name]]
            if len(s.ne) == 3:
                parts = [quantize(_values(s, seed, e), qt) for e in range(s.ne[2])]
                _write(w, np.stack(parts))
            elif len(s.ne) == 2 and s.name.endswith(".bias"):
                _write(w, quantize(_bias_rows(s, seed), qt))
            else:
                _write(w, quantize(_values(s, seed, 0), qt))
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write(w: GGUFWriter, raw: np.ndarray):
    w.write_tensor_data(np.ascontiguousarray(raw))


def _metadata(w: GGUFWriter, p: Preset, recipe: str, seed: int):
    a = p.arch
    w.add_name(f"moeparity fixture {p.name}")
    w.add_string("general.description", f"synthetic fixture: preset={p.name} recipe={recipe} seed={seed}")
    w.add_uint32("general.quantization_version", 2)
    if recipe == "q4_k_m":
        w.add_uint32("general.file_type", 15)           # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_uint32(f"{a}.block_count", p.n_layer)
    w.add_uint32(f"{a}.context_length", 4096)
    w.add_uint32(f"{a}.embedding_length", p.n_embd)
    w.add_uint32(f"{a}.feed_forward_length", p.n_ff or p.n_ff_exp)
    w.add_uint32(f"{a}.attention.head_count", p.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", p.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", p.head_dim)
    w.add_uint32(f"{a}.attention.value_length", p.head_dim)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.vocab_size", p.n_vocab)
    if p.n_expert:
        w.add_uint32(f"{a}.expert_count", p.n_expert)
        w.add_uint32(f"{a}.expert_used_count", p.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", p.n_ff_exp)
    if p.n_expert_shared:
        w.add_uint32(f"{a}.expert_shared_count", p.n_expert_shared)
        if p.n_ff_shexp:
            w.add_uint32(f"{a}.expert_shared_feed_forward_length", p.n_ff_shexp)
    if p.n_leading_dense:
        w.add_uint32(f"{a}.leading_dense_block_count", p.n_leading_dense)
    for k, v in p.extra_keys:
        if isinstance(v, bool):
            w.add_bool(f"{a}.{k}", v)
        elif isinstance(v, int):
            w.add_uint32(f"{a}.{k}", v)
        else:
            w.add_float32(f"{a}.{k}", float(v))


def default_path(preset: str = "tiny", recipe: str | None = None, n_layer: int | None = None,
                 seed: int = 0, n_expert: int | None = None) -> str:
    tag = preset
    if recipe:
        tag += "-" + recipe.replace(":", "_").replace("/", "_")
    if n_layer:
        tag += f"-L{n_layer}"
    if n_expert:
        tag += f"-E{n_expert}"
    return os.path.join(DEFAULT_DIR, f"{tag}-s{seed}.gguf")


def ensure(preset: str = "tiny", path: str | None = None, **kw) -> str:
    """Build the fixture unless it already exists (fixtures are deterministic, so reuse is safe)."""
    path = path or default_path(preset, **kw)
    if not os.path.exists(path):
        build(path, preset, **kw)
    return path
