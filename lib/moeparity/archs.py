"""Architecture table: how each llama.cpp architecture's FFN block is wired, and the defaults
llama.cpp uses when a metadata key is absent (llama-model.cpp load_hparams / build_* graphs).

A row is data, not code: moe.py reads `gating`, `act`, `norm_topk`, … from here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    moe: bool                      # has routed experts (may still have leading dense layers)
    act: str = "silu"              # silu | gelu_tanh | swiglu_oai
    gating: str = "softmax"        # softmax | sigmoid | softmax_weight (softmax over the selected top-k)
    norm_topk: bool = False        # renormalise the selected weights to sum 1 (default if key absent)
    shared_gate: bool = False      # qwen2moe: shared expert scaled by sigmoid(ffn_gate_inp_shexp · x)
    ffn_norm: str = "ffn_norm"     # name of the norm weight in front of the FFN
    rms_eps: float = 1e-6
    swiglu_alpha: float = 1.702    # gpt-oss clamped SwiGLU
    swiglu_limit: float = 7.0


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("qwen3moe", moe=True, norm_topk=True),
    Arch("qwen2moe", moe=True, norm_topk=False, shared_gate=True),
    Arch("llama", moe=True, norm_topk=True, rms_eps=1e-5),          # Mixtral is written as llama + experts
    Arch("olmoe", moe=True, norm_topk=False, rms_eps=1e-5),
    Arch("deepseek2", moe=True, norm_topk=False),                   # gating/norm/scale come from keys
    Arch("gpt-oss", moe=True, act="swiglu_oai", gating="softmax_weight",
         ffn_norm="post_attention_norm", rms_eps=1e-5),
    Arch("granitemoe", moe=True, norm_topk=True, rms_eps=1e-5),
    Arch("qwen2", moe=False),
    Arch("qwen3", moe=False),
    Arch("gemma3", moe=False, act="gelu_tanh"),
]}

# llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE enum as written in GGUF
GATING_FUNC = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}
