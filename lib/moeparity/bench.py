"""Benchmarks shared by benchmarks/*.py and `moeparity bench`. Speed is measured, not asserted:
each row names the shape, the machine, ours vs the named baseline measured in the same run, ratio.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from .errors import BadArgument

MARK_BEGIN = "<!-- bench:{name}:begin -->"
MARK_END = "<!-- bench:{name}:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}, numpy {np.__version__}"


def timeit(fn, repeat=7, min_time=0.2):
    """Median seconds of fn() over `repeat` rounds, each round long enough to be measurable."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    inner = max(1, int(min_time / repeat / one))
    res = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        res.append((time.perf_counter() - t) / inner)
    return float(np.median(res))


def memory_bandwidth(size=256 * 2**20) -> float:
    """Host copy bandwidth in GB/s, counting bytes read + written (numpy copyto of `size` bytes)."""
    a = np.ones(size // 8)
    b = np.empty_like(a)
    t = timeit(lambda: np.copyto(b, a), repeat=5, min_time=0.5)
    return 2 * a.nbytes / t / 1e9


def write_section(path: str, name: str, text: str):
    """Replace (or append) the marked section `name` of a markdown file."""
    if not path:
        return
    begin, end = MARK_BEGIN.format(name=name), MARK_END.format(name=name)
    body = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    if begin in old and end in old:
        pre, rest = old.split(begin, 1)
        post = rest.split(end, 1)[1].lstrip("\n")
        new = pre + body + ("\n" + post if post else "")
    else:
        new = old.rstrip() + "\n\n" + body
    with open(path, "w") as f:
        f.write(new)


def run(what: str, quick: bool = False, write: str = "BENCHMARKS.md") -> int:
    if what == "cpu":
        from .bench_cpu import run as run_cpu
        text = run_cpu(quick=quick)
    elif what == "sweep":
        from .bench_sweep import run as run_sweep
        text = run_sweep(quick=quick)
    elif what == "gpu":
        from .bench_gpu import run as run_gpu
        text = run_gpu(quick=quick)
    else:
        raise BadArgument(f"unknown benchmark {what!r}")
    print(text)
    write_section(write, what, text)
    return 0
