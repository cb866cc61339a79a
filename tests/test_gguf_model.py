"""Model access, hparams of every architecture, typed errors, qtype map, fixtures."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from gguf import GGUFWriter

from moeparity import fixtures
from moeparity.errors import (LayerOutOfRange, MissingTensor, ModelFileError, MoeParityError,
                              TensorSizeMismatch, UnknownArchitecture)
from moeparity.gguf_model import Model
from moeparity.recipes import use_more_bits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# preset → expected hparams (subset) as llama.cpp would read them
EXPECT = {
    "tiny": dict(arch="qwen3moe", n_expert=16, n_expert_used=4, norm_topk=True, gating="softmax", act="silu"),
    "tiny-qwen2moe": dict(arch="qwen2moe", n_expert_shared=1, n_ff_shexp=512, norm_topk=False, shared_gate=True),
    "tiny-mixtral": dict(arch="llama", n_expert=8, n_expert_used=2, norm_topk=True, rms_eps=1e-6),
    "tiny-olmoe": dict(arch="olmoe", norm_topk=False, gating="softmax"),
    "tiny-deepseek2": dict(arch="deepseek2", gating="sigmoid", norm_topk=True, expert_weights_scale=2.5,
                           n_leading_dense=1, n_expert_shared=2),
    "tiny-gpt-oss": dict(arch="gpt-oss", gating="softmax_weight", act="swiglu_oai", swiglu_limit=7.0),
    "tiny-granitemoe": dict(arch="granitemoe", norm_topk=True),
    "tiny-llama": dict(arch="llama", n_expert=0, n_ff=512, act="silu"),
    "tiny-qwen2": dict(arch="qwen2", n_expert=0),
    "tiny-qwen3": dict(arch="qwen3", n_expert=0),
    "tiny-gemma3": dict(arch="gemma3", n_expert=0, act="gelu_tanh"),
}


@pytest.mark.parametrize("preset", list(EXPECT))
def test_arch_hparams(build, preset):
    m = Model.open(build(preset))
    h = m.hparams
    for k, v in EXPECT[preset].items():
        assert getattr(h, k) == pytest.approx(v), (k, getattr(h, k), v)
    p = fixtures.PRESETS[preset]
    assert (h.n_layer, h.n_embd) == (p.n_layer, p.n_embd)
    for i in range(h.n_layer):
        lay = m.layer(i)
        if lay.is_moe:
            g = lay["gate_exps"]
            assert g.ne == (h.n_embd, h.n_ff_exp, h.n_expert)
            assert lay["down_exps"].ne == (h.n_ff_exp, h.n_embd, h.n_expert)
            assert lay["router"].ne == (h.n_embd, h.n_expert)
        else:
            assert lay["gate"].ne[0] == h.n_embd


def test_deepseek_leading_dense_and_shared(build):
    m = Model.open(build("tiny-deepseek2"))
    assert not m.layer(0).is_moe and m.layer(1).is_moe
    assert m.layer(1)["gate_shexp"].ne == (256, 512)
    assert m.layer(1).get("exp_probs_b") is not None


def test_expert_byte_slices_are_contiguous_views(tiny):
    m = Model.open(tiny)
    t = m.layer(2)["up_exps"]
    assert t.expert_bytes * t.n_expert == t.nbytes
    e3 = t.expert(3)
    assert e3.shape == (t.n_out, t.row_bytes)
    assert np.shares_memory(e3, m.reader.data)          # a view of the mmap, nothing copied
    assert np.array_equal(t.rows(5, 9, expert=3), e3[5:9])
    with pytest.raises(LayerOutOfRange):
        t.expert(t.n_expert)


def test_qtype_map_matches_q4_k_m_recipe(tiny):
    m = Model.open(tiny)
    downs = [row["down_exps"] for row in m.qtype_map()]
    assert downs == ["Q6_K" if use_more_bits(i, 8) else "Q4_K" for i in range(8)]
    assert {"Q4_K", "Q6_K"} <= set(downs)
    assert all(row["gate_exps"] == "Q4_K" and row["router"] == "F32" for row in m.qtype_map())
    assert m.tensors["output.weight"].qtype_name == "Q6_K"


def test_48_layer_dims_fixture_has_q6k_downs_exactly_where_llama_cpp_puts_them(build):
    m = Model.open(build("qwen3-30b-a3b-dims", n_expert=1))
    h = m.hparams
    assert (h.n_layer, h.n_embd, h.n_ff_exp) == (48, 2048, 768)
    q6 = [i for i, row in enumerate(m.qtype_map()) if row["down_exps"] == "Q6_K"]
    assert q6 == [0, 1, 2, 3, 4, 5] + list(range(8, 42, 3)) + list(range(42, 48))
    assert all(row["gate_exps"] == row["up_exps"] == "Q4_K" for row in m.qtype_map())


def test_fallback_for_rows_not_multiple_of_256(build):
    m = Model.open(build("tiny-odd"))
    downs = [r["down_exps"] for r in m.qtype_map()]
    assert downs == ["Q5_0", "Q5_0", "Q8_0", "Q8_0"]     # Q4_K → Q5_0, Q6_K → Q8_0 (ne0 = 96)


def test_uniform_and_yaml_recipes(build, tmp_path):
    m = Model.open(build("tiny-olmoe", recipe="uniform:Q5_K"))
    assert {r["gate_exps"] for r in m.qtype_map()} == {"Q5_K"}
    y = tmp_path / "map.yaml"
    y.write_text("default: Q8_0\nrules:\n  - {match: 'ffn_down_exps', qtype: IQ4_XS}\n")
    m = Model.open(fixtures.build(str(tmp_path / "y.gguf"), "tiny-olmoe", recipe=str(y)))
    assert {r["down_exps"] for r in m.qtype_map()} == {"IQ4_XS"}
    assert {r["up_exps"] for r in m.qtype_map()} == {"Q8_0"}


def test_same_seed_same_bytes(tmp_path):
    a = fixtures.build(str(tmp_path / "a.gguf"), "tiny-olmoe", seed=7)
    b = fixtures.build(str(tmp_path / "b.gguf"), "tiny-olmoe", seed=7)
    c = fixtures.build(str(tmp_path / "c.gguf"), "tiny-olmoe", seed=8)
    h = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (a, b, c)]
    assert h[0] == h[1] != h[2]


def test_tiny_builds_fast(tmp_path):
    t = time.perf_counter()
    fixtures.build(str(tmp_path / "t.gguf"), "tiny")
    assert time.perf_counter() - t < 20


# ---------------------------------------------------------------- typed errors
def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        Model.open(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + os.urandom(100))
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        Model.open(p)


@pytest.mark.parametrize("keep", [0.001, 0.3, 0.999])
def test_truncated(tiny, tmp_path, keep):
    data = open(tiny, "rb").read()
    p = tmp_path / "t.gguf"
    p.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelFileError, match="truncated"):
        Model.open(p)


def _write(path, arch, tensors, keys=()):
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.embedding_length", 32)
    for k, v in keys:
        w.add_uint32(f"{arch}.{k}", v)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unknown_architecture(tmp_path):
    p = _write(tmp_path / "a.gguf", "mamba", [("blk.0.ffn_norm.weight", np.ones(32, np.float32))])
    with pytest.raises(UnknownArchitecture, match="mamba"):
        Model.open(p)


def test_missing_required_tensor(tmp_path):
    ts = [("blk.0.ffn_norm.weight", np.ones(32, np.float32)),
          ("blk.0.ffn_gate_inp.weight", np.ones((4, 32), np.float32)),
          ("blk.0.ffn_gate_exps.weight", np.ones((4, 8, 32), np.float32)),
          ("blk.0.ffn_up_exps.weight", np.ones((4, 8, 32), np.float32))]
    p = _write(tmp_path / "m.gguf", "qwen3moe", ts, keys=[("expert_count", 4), ("expert_used_count", 2)])
    m = Model.open(p)
    with pytest.raises(MissingTensor, match="blk.0.ffn_down_exps.weight"):
        m.layer(0)
    with pytest.raises(LayerOutOfRange):
        m.layer(1)


def test_tensor_size_mismatch(tiny, tmp_path):
    data = bytearray(open(tiny, "rb").read())
    name = b"blk.0.ffn_gate_exps.weight"
    i = data.index(name) + len(name)
    n_dims = int.from_bytes(data[i:i + 4], "little")
    assert n_dims == 3
    ne2 = i + 4 + 16                                     # third dimension (n_expert)
    data[ne2:ne2 + 8] = (int.from_bytes(data[ne2:ne2 + 8], "little") * 2).to_bytes(8, "little")
    p = tmp_path / "bad.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(TensorSizeMismatch, match="blk.0.ffn_gate_exps.weight"):
        Model.open(p)


def test_all_errors_are_moeparity_errors():
    for cls in (ModelFileError, UnknownArchitecture, MissingTensor, TensorSizeMismatch, LayerOutOfRange):
        assert issubclass(cls, MoeParityError)


# ---------------------------------------------------------------- CLI
def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    return subprocess.run([sys.executable, "-m", "moeparity.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_inspect_json(tiny):
    r = _cli("inspect", tiny, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["architecture"] == "qwen3moe"
    downs = [L["qtypes"]["down_exps"] for L in s["layers"]]
    assert downs == ["Q6_K" if use_more_bits(i, 8) else "Q4_K" for i in range(8)]
    assert s["layers"][1]["changed_from_previous"] == ["down_exps"]
    assert s["qtypes"]["Q6_K"]["tensors"] == 4 + 1 + 4     # 4 downs, output, attn_v on 4 use_more_bits layers


def test_cli_inspect_text_and_speed(tiny):
    t = time.perf_counter()
    r = _cli("inspect", tiny)
    assert r.returncode == 0 and "qtype map" in r.stdout and "Q6_K*" in r.stdout
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize("args,msg", [
    (["inspect", "/nonexistent.gguf"], "no such file"),
    (["inspect", __file__], "not a GGUF file"),
    (["make-fixture", "--preset", "nope"], "unknown preset"),
    (["make-fixture", "--recipe", "q9_z"], "unknown recipe"),
    (["make-fixture", "--recipe", "uniform:Q7_K"], "Q7_K"),
])
def test_cli_errors_are_one_line_exit_2(args, msg, tmp_path):
    r = _cli(*args, *(["-o", str(tmp_path / "x.gguf")] if args[0] == "make-fixture" else []))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_cli_make_fixture(tmp_path):
    out = tmp_path / "f.gguf"
    r = _cli("make-fixture", "--preset", "tiny-qwen3", "--layers", "2", "--seed", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Model.open(out).hparams.n_layer == 2


def test_header_with_a_real_size_tokenizer_opens_fast(tmp_path):
    """Real GGUFs carry ~150k tokenizer strings and merges; opening must stay header-fast."""
    p = str(tmp_path / "tok.gguf")
    w = GGUFWriter(p, "qwen3moe")
    w.add_uint32("qwen3moe.block_count", 1)
    w.add_uint32("qwen3moe.embedding_length", 32)
    w.add_array("qwen3moe.feed_forward_length", [64, 96])            # short array: kept
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(151936)])
    w.add_array("tokenizer.ggml.token_type", [1] * 151936)
    w.add_array("tokenizer.ggml.merges", [f"a{i} b{i}" for i in range(151387)])
    w.add_string("general.name", "after the arrays")
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = time.perf_counter()
    m = Model.open(p)
    assert time.perf_counter() - t < 2
    assert m.metadata["general.name"] == "after the arrays"        # parsing resumed at the right offset
    assert m.metadata["qwen3moe.feed_forward_length"] == [64, 96]
    assert m.hparams.n_ff == 96
    assert np.allclose(m.tensors["blk.0.ffn_norm.weight"].f32(), 1.0)


def test_hostile_string_length_is_a_clear_error(tmp_path):
    p = tmp_path / "h.gguf"
    w = GGUFWriter(str(p), "qwen3moe")
    w.add_uint32("qwen3moe.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(1000)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    data = bytearray(p.read_bytes())
    i = data.index(b"t500") - 8
    data[i:i + 8] = (2 ** 62).to_bytes(8, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        Model.open(p)


def test_corrupted_headers_give_typed_errors_only(tiny, tmp_path, rng):
    """Random byte flips in the header: opening either works or raises a MoeParityError — never
    another exception, never a hang on an absurd count."""
    data = open(tiny, "rb").read()
    p = tmp_path / "fz.gguf"
    for _ in range(60):
        d = bytearray(data)
        for i in rng.integers(8, 12000, size=int(rng.integers(1, 4))):
            d[i] = int(rng.integers(0, 256))
        p.write_bytes(bytes(d))
        try:
            m = Model.open(p)
            for i in range(m.hparams.n_layer):
                try:
                    m.layer(i)
                except MoeParityError:
                    pass
        except MoeParityError:
            pass


def test_implausible_hparams(tmp_path):
    p = _write(tmp_path / "a.gguf", "qwen3moe", [("blk.0.ffn_norm.weight", np.ones(32, np.float32))],
               keys=[("expert_count", 8), ("expert_used_count", 9)])
    with pytest.raises(ModelFileError, match="expert_used_count"):
        Model.open(p)


def test_unknown_tensor_type_id_says_so(tiny, tmp_path):
    data = bytearray(open(tiny, "rb").read())
    name = b"blk.0.ffn_gate_exps.weight"
    i = data.index(name) + len(name)
    t = i + 4 + 3 * 8                                    # after n_dims and the 3 dims: the type id
    data[t:t + 4] = (250).to_bytes(4, "little")
    p = tmp_path / "newer.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="type this gguf-py does not know"):
        Model.open(p)
