#!/usr/bin/env bash
# ptxas.sh — print the path of NVIDIA's PTX assembler for tests/cuda_ptx.rs, fetching it once.
#
# The test lowers our own cubecl kernels to PTX for each GPU architecture CUDA 13 supports (no
# GPU needed) and, given `ptxas`, assembles that PTX to machine code, as the driver does when it
# loads a module. The lent GPUs' driver is CUDA 13.0, so the assembler is CUDA 13.0's, from
# NVIDIA's compiler wheel on PyPI (one of the registries our machines reach), unpacked into
# target/ptxas on the first call.
# Prints nothing and exits 1 where it cannot be had; the test then only lowers.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/ptxas
bin=$dir/nvidia/cu13/bin/ptxas
if [ ! -x "$bin" ]; then
    mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --dest "$dir" "nvidia-cuda-nvcc==13.0.*" >&2
    python3 - "$dir" <<'PY'
import glob, os, sys, zipfile
dir = sys.argv[1]
wheel = sorted(glob.glob(os.path.join(dir, "nvidia_cuda_nvcc-13.0*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    z.extract("nvidia/cu13/bin/ptxas", dir)
os.remove(wheel)
PY
    chmod +x "$bin"
fi
"$bin" --version > /dev/null
echo "$PWD/$bin"
