#!/usr/bin/env bash
# One-command, idempotent set-up of hpctrain on a Debian machine, as root.
#
#   scripts/setup.sh            system packages, .venv, torch, the project, Horovod
#
# Variables (all optional):
#   HPCTRAIN_TORCH      pip arguments that install torch (default: "torch==2.13.0", the CPU
#                       build). On a GPU cluster, e.g.
#                       HPCTRAIN_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
#   HPCTRAIN_VENV       where the virtual environment lives (default: .venv in the checkout)
#   HPCTRAIN_CACHE      where built Horovod wheels are cached (default: ~/.cache/hpctrain)
#   HPCTRAIN_NO_APT=1   skip apt (HPC login nodes: 'module load openmpi' first, see docs/install.md)
#   HOROVOD_GPU_OPERATIONS, HOROVOD_CUDA_HOME, HOROVOD_NCCL_HOME, ... pass through to the
#                       Horovod build unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${HPCTRAIN_VENV:-$here/.venv}
cache=${HPCTRAIN_CACHE:-$HOME/.cache/hpctrain}
torch_spec=${HPCTRAIN_TORCH:-torch==2.13.0}
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system packages ---------------------------------------------------------------------
# chromium: the data-quality report is checked in a real headless browser by the tests.
# wrk: the HTTP load generator of scripts/bench_serve.py; curl: the demo asks the server.
apt_pkgs=(openmpi-bin libopenmpi-dev slurm-wlm slurm-client munge cmake g++ make procps iproute2 chromium wrk curl)
if [ "${HPCTRAIN_NO_APT:-0}" != 1 ]; then
    missing=()
    for p in "${apt_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { echo "setup.sh: apt packages missing (${missing[*]}) and not root; install them or set HPCTRAIN_NO_APT=1 after 'module load'" >&2; exit 1; }
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # policy-rc.d stops the packages' postinst from starting daemons: the local
        # cluster is started by scripts/local-cluster.sh with its own config.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        rm -f /usr/sbin/policy-rc.d
    else
        log "apt packages present"
    fi
fi
command -v mpicc >/dev/null || { echo "setup.sh: mpicc not found; install libopenmpi-dev or 'module load openmpi'" >&2; exit 1; }

# --- virtual environment --------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$py" -m venv "$venv"
fi
pip_() {  # quiet pip; drops the noise of this machine's unused local index entries
    "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip=(pip_)
"${pip[@]}" install --upgrade pip setuptools wheel >/dev/null

# torch first, pinned: installing the project with torch absent would pull a CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    log "pip install $torch_spec"
    # shellcheck disable=SC2086
    "${pip[@]}" install $torch_spec
fi
torch_ver=$("$venv/bin/python" -c "import torch; print(torch.__version__)")

# mpi4py is built from source against the system MPI, the same library Horovod links.
if ! "$venv/bin/python" -c "import mpi4py.MPI" 2>/dev/null; then
    log "pip install mpi4py (built against $(command -v mpicc))"
    "${pip[@]}" install --no-binary mpi4py "mpi4py>=4,<5"
fi

log "pip install -e .[dev,serve]"
"${pip[@]}" install -e ".[dev,serve]" "torch==$torch_ver"

# --- Horovod 0.28.1, patched to C++17 and cached by (python, torch, MPI) ----------------------
hvd_ok() { "$venv/bin/python" - <<'PY' 2>/dev/null
import horovod.torch as hvd
raise SystemExit(0 if hvd.mpi_built() else 1)
PY
}
if hvd_ok; then
    log "horovod present"
else
    pyv=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    mpiv=$(mpirun --version 2>/dev/null | head -n1 | tr -cs 'A-Za-z0-9.' '-' | sed 's/-$//')
    gpuops=${HOROVOD_GPU_OPERATIONS:-cpu}
    key="horovod-0.28.1_${pyv}_torch-${torch_ver}_${mpiv}_${gpuops}"
    whl_dir="$cache/wheels/$key"
    if ! ls "$whl_dir"/horovod-*.whl >/dev/null 2>&1; then
        log "building Horovod 0.28.1 (about 2-3 minutes on 2 cores; cached in $whl_dir)"
        "${pip[@]}" install cloudpickle psutil pyyaml packaging cffi
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        "${pip[@]}" download --no-deps --no-binary :all: -d "$work" horovod==0.28.1
        tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
        src="$work/horovod-0.28.1"
        # 0.28.1 asks for C++14; torch 2.x headers refuse anything below C++17.
        for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
            sed -i -E 's/CMAKE_CXX_STANDARD[[:space:]]+1[14]/CMAKE_CXX_STANDARD 17/' "$f"
            grep -q 'CMAKE_CXX_STANDARD 17' "$f" || sed -i '1i set(CMAKE_CXX_STANDARD 17)' "$f"
        done
        mkdir -p "$whl_dir"
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
        HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
            "${pip[@]}" wheel --no-deps --no-build-isolation -w "$whl_dir" "$src" >"$work/build.log" 2>&1 \
            || { tail -n 40 "$work/build.log" >&2; echo "setup.sh: Horovod build failed (log above)" >&2; exit 1; }
    fi
    log "installing Horovod from $whl_dir"
    "${pip[@]}" install cloudpickle psutil pyyaml packaging cffi
    "${pip[@]}" install --no-deps --force-reinstall "$whl_dir"/horovod-*.whl
    hvd_ok || { echo "setup.sh: Horovod installed but has no MPI support" >&2; exit 1; }
fi
log "done: $("$venv/bin/hpctrain" --version 2>/dev/null || echo 'hpctrain not importable yet')"
