"""CPU fused matvec benchmark; same as `moeparity bench cpu` (writes its section of BENCHMARKS.md)."""
import sys

from moeparity.bench import run

if __name__ == "__main__":
    sys.exit(run("cpu", quick="--quick" in sys.argv, write="BENCHMARKS.md"))
