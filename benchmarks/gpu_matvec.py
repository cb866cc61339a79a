"""GPU fused matvec benchmark; same as `moeparity bench gpu` (writes its section of BENCHMARKS.md)."""
import sys

from moeparity.bench import run

if __name__ == "__main__":
    sys.exit(run("gpu", quick="--quick" in sys.argv, write=sys.argv[sys.argv.index("--write") + 1]
                 if "--write" in sys.argv else "BENCHMARKS.md"))
