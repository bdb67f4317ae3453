#!/usr/bin/env bash
# The GPU check of ACDC (issue 13), run on a lent GPU machine from the repository root: the tests
# that run the device code (CUDA == naive on the CPU), then the dense and MNIST-shape benchmark
# rows with acdc on the GPU (the naive loop stays on the CPU). Logs go to $OUT (or /tmp/gpu_check).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_acdc.py -k "gpu or device or dense or cross_entropy" 2>&1 | tee "$out/pytest.log"
python3 benchmarks/acdc.py --dense-only --device cuda --naive-max-seconds 0 2>&1 | tee "$out/dense.log"
python3 benchmarks/acdc.py --big-only --device cuda 2>&1 | tee "$out/big.log"
# the MNIST-shape row on two CPU cores of the same (otherwise idle) machine, for the CPU goal
timeout 200 taskset -c 0,1 python3 benchmarks/acdc.py --big-only --device cpu --threads 2 2>&1 | tee "$out/big_cpu2.log"
