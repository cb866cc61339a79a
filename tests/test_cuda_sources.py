"""Every .cu file compiles with the machine's nvcc (CI has no GPU, but has the compiler)."""
import glob
import os
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
