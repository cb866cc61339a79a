"""Every .cu file compiles with the machine's nvcc (CI has no GPU, but has the compiler)."""
import glob
import os
import re
import shutil
import subprocess

import pytest

from moeparity.backends.cuda import KERNEL_DIR, NVRTC_OPTIONS

SOURCES = sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu")))


def test_there_are_kernels():
    assert SOURCES


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed on this machine")
@pytest.mark.parametrize("src", SOURCES, ids=os.path.basename)
def test_compiles_with_nvcc(src, tmp_path):
    r = subprocess.run(["nvcc", "-arch=sm_90", *NVRTC_OPTIONS, f"-I{KERNEL_DIR}", "-c", src,
                        "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stderr.lower(), r.stderr[-3000:]


def test_kernel_entry_points_cover_the_qtype_table():
    from moeparity.qtypes import QTYPES
    src = open(os.path.join(KERNEL_DIR, "moe_matvec.cu")).read()
    for q in QTYPES:
        assert f"ENTRY({q})" in src


def _defines(src: str) -> dict:
    out = {}
    for m in re.finditer(r"^#define (\w+) ([^/\n]+?)\s*(?://.*)?$", src, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


def test_layout_constants_match_the_kernels():
    """gpu_layout.py restates the kernels' constants for the emulation; a drift would make the
    emulation silently disagree with the GPU, which CI (no GPU) could not otherwise see."""
    from moeparity.backends import gpu_layout as L
    src = open(os.path.join(KERNEL_DIR, "moe_matvec.cu")).read()
    d = _defines(src)
    assert (int(d["WARPS"]), int(d["MAXT"]), int(d["XSLOT"])) == (L.WARPS, L.MAXT, L.XSLOT)
    shapes = {"1": "SHAPE_1", "1n": "SHAPE_1N", "gu1": "SHAPE_1GU", "": "SHAPE_T", "gu": "SHAPE_T"}
    for v, macro in shapes.items():
        assert tuple(int(x) for x in d[macro].split(",")) == L.SHAPES[v], macro
    for v, kind in (("", "moe_matvec"), ("1", "moe_matvec1"), ("1n", "moe_matvec1n"), ("gu", "moe_gate_up"),
                    ("gu1", "moe_gate_up1")):
        assert re.search(rf"MATVEC\({kind}, Q, \w+, {shapes[v]},", src), kind


def test_qtype_flags_match_the_kernels():
    from moeparity.backends import gpu_layout as L
    from moeparity.qtypes import QTYPES
    src = open(os.path.join(KERNEL_DIR, "decode.cuh")).read()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^QTYPE\((\w+), (\d+), (\d+), (true|false), (true|false), ([\d.]+)f, ([\d.]+)f\)", src, re.M)}
    assert set(rows) == set(QTYPES)
    for name, (block, nbytes, uses_min, min_q81, k, bias) in rows.items():
        qt = QTYPES[name]
        assert (int(block), int(nbytes)) == (qt.block, qt.nbytes), name
        assert (uses_min == "true") == (name in L.USES_MIN), name
        assert (min_q81 == "true") == (name in L.MIN_FORMATS), name
        assert ((float(k), float(bias)) if float(k) else None) == L.AFFINE.get(name), name


@pytest.fixture(scope="module")
def only_ptx(tmp_path_factory):
    """The PTX of the `-DONLY` build (the tensor-core kernels, x_fixed and what Launch launches), compiled
    once for the tests that read it."""
    out = tmp_path_factory.mktemp("ptx") / "k.ptx"
    r = subprocess.run(["nvcc", "-arch=sm_90", *NVRTC_OPTIONS, f"-I{KERNEL_DIR}", "-DONLY", "-ptx",
                        os.path.join(KERNEL_DIR, "moe_matvec.cu"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out.read_text()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed on this machine")
def test_matvec_reads_x_fixed_output_with_coherent_loads(only_ptx):
    """The tensor-core matvec reads x_fixed's output (digits, σ, Mx) after griddepcontrol.wait, but
    ptxas moves non-coherent loads (ld.global.nc: __ldg, const __restrict__) above that wait, since
    .nc data may not change while the kernel runs (session 9: the SASS had the B-fragment and σ loads
    before ACQBULK; moe_ffn's first call then read a fresh buffer's garbage). So none of them is .nc."""
    bodies = re.findall(r"\.entry (moe_mma\w+)\((.*?)\n}", only_ptx, re.S)
    assert len(bodies) == 12
    for name, body in bodies:
        assert "griddepcontrol.wait" in body, name
        assert "ld.global.nc" not in body, name


class _Fn:
    """A stand-in kernel handle (Launch runs its one-time prep at construction)."""

    def __init__(self, name):
        self.name, self.max_dynamic_shared_size_bytes = name, 0

    def __call__(self, grid, block, args, shared_mem=0):
        pass


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed on this machine")
def test_launch_args_match_the_kernel_signatures(only_ptx):
    """Every launch Launch prepares passes as many arguments as its kernel declares (from nvcc's PTX):
    CuPy packs the arguments it is given, so a kernel whose signature grew (session 10: `strided`)
    would read garbage for the missing ones on a GPU, which CI (no GPU) could not otherwise see.
    Launch runs here on a stand-in device (numpy arrays, recording kernel handles)."""
    from types import SimpleNamespace

    import numpy as np

    from moeparity.backends.cuda import Launch
    from moeparity.qtypes import QTYPES
    params = {name: len(re.findall(r"\.param ", plist)) for name, plist in
              re.findall(r"\.entry (\w+)\((.*?)\)", only_ptx, re.S)}
    fns = {}
    cp = SimpleNamespace(empty=np.empty, zeros=np.zeros, asarray=np.asarray, float32=np.float32,
                         uint8=np.uint8, int32=np.int32, uint64=np.uint64)
    be = SimpleNamespace(cp=cp, sm_count=132, occupancy=lambda fn, block, smem: 2, smem_per_block=227 * 1024,
                         module=SimpleNamespace(get_function=lambda n: fns.setdefault(n, _Fn(n))))
    rng = np.random.default_rng(0)
    checked = set()
    for q in ("Q4_K", "Q6_K"):
        qt = QTYPES[q]
        for act in ("f32", "q8_1"):
            for ntok, k in ((1, 1), (8, 4), (3, 2)):
                for nw in (1, 2):
                    E, R, n_in = 4, 40, 512
                    Ws = [np.zeros((E, R, n_in // qt.block * qt.nbytes), np.uint8) for _ in range(nw)]
                    ids = np.stack([rng.choice(E, k, replace=False) for _ in range(ntok)])
                    x = rng.standard_normal((ntok, n_in)).astype(np.float32)
                    launch = Launch(be, qt, Ws, R, n_in, ids, x, act)
                    for fn, grid, block, smem, args, *how in launch.prep + launch.steps:
                        assert fn.name in params, fn.name
                        assert len(args) == params[fn.name], (fn.name, len(args), params[fn.name])
                        checked.add(fn.name)
    assert {"x_fixed", "moe_mma2_Q4_K", "moe_mma4_Q6_K", "moe_mma_gu8_Q4_K", "mma_tiles_gu_Q6_K",
            "moe_gate_up_Q6_K", "moe_matvec_Q4_K"} <= checked, checked
