python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1
python3 benchmarks/gpu_tune.py "$@" 2>&1 | tee $OUT/tune.log
