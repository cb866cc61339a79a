"""moeparity CLI: every verb is a thin shell over a library call a notebook can make too.

Exit codes: 0 clean, 1 divergence found, 2 user error (a MoeParityError, printed as one line).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import MoeParityError


def _inspect(a):
    from .gguf_model import Model
    from .inspect_model import render, summary
    s = summary(Model.open(a.model))
    print(json.dumps(s, indent=1) if a.json else render(s))
    return 0


def _make_fixture(a):
    from . import fixtures
    path = a.output or fixtures.default_path(a.preset, a.recipe, a.layers, a.seed, a.experts)
    t = time.perf_counter()
    fixtures.build(path, a.preset, recipe=a.recipe, n_layer=a.layers, seed=a.seed, n_expert=a.experts)
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(path)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="moeparity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("inspect", help="architecture, hparams and per-layer qtype map (header only)")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=_inspect)

    s = sub.add_parser("make-fixture", help="build a synthetic GGUF fixture")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--recipe", default=None, help="q4_k_m | mxfp4_moe | uniform:QTYPE | map.yaml "
                                                  "(default: the preset's)")
    s.add_argument("--layers", type=int, default=None)
    s.add_argument("--experts", type=int, default=None, help="number of experts (MoE presets)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(fn=_make_fixture)

    s = sub.add_parser("bench", help="benchmarks (writes rows to BENCHMARKS.md)")
    s.add_argument("what", choices=["cpu", "gpu", "sweep"])
    s.add_argument("--quick", action="store_true", help="fewer qtypes and repeats")
    s.add_argument("--write", default="BENCHMARKS.md", help="file to append the table to ('' = don't)")
    s.set_defaults(fn=lambda a: _run_bench(a))

    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except MoeParityError as e:
        print(f"moeparity: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("moeparity: interrupted", file=sys.stderr)
        return 130


def _run_bench(a):
    from . import bench
    return bench.run(a.what, quick=a.quick, write=a.write)


if __name__ == "__main__":
    sys.exit(main())
