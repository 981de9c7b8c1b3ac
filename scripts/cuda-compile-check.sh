#!/usr/bin/env bash
# Compile every hpctrain CUDA kernel for a real GPU (sm_90 by default) on a machine without one:
# numba-cuda's front end and NVVM, from wheels, no driver (see scripts/cuda_compile_check.py
# for why the simulator alone is not enough). The tools live in their own venv, cached under
# $HPCTRAIN_CACHE (default ~/.cache/hpctrain), so the project's venv keeps numba's built-in
# simulator that the cudasim tests use. First run: ~700 MB of wheels, about a minute.
#   scripts/cuda-compile-check.sh [--cc 9.0] [--junitxml out.xml]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${HPCTRAIN_CACHE:-$HOME/.cache/hpctrain}
# Pinned together: numba-cuda's compile_ptx and the NVVM it finds are what this check trusts.
pins=(numba-cuda==0.30.4 nvidia-nvvm==13.5.37 nvidia-cuda-nvrtc==13.5.37 pyyaml)
key=$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-12)
venv=$cache/cuda-compile-$key
py=${PYTHON:-python3}

if ! "$venv/bin/python" -c 'import numba.cuda, yaml' 2>/dev/null; then
    echo "[cuda-compile] creating $venv (${pins[*]})"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check -q install "${pins[@]}" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
# hpctrain.kernels exists only as installed (kernels/ is mapped into the package by setup.cfg):
# stage hpctrain/ and kernels/ as one package in a scratch directory.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$here/hpctrain" "$stage/hpctrain"
cp -r "$here/kernels" "$stage/hpctrain/kernels"
cd "$stage"
env -u NUMBA_ENABLE_CUDASIM PYTHONPATH="$stage" PYTHONWARNINGS=ignore \
    "$venv/bin/python" "$here/scripts/cuda_compile_check.py" "$@"
