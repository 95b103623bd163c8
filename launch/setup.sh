#!/usr/bin/env bash
# Installs every dependency of moe-train (DESIGN §2), idempotently: Debian packages and the oracle venv.
# Usage: launch/setup.sh [--no-venv]
set -euo pipefail

want_venv=1
[[ "${1:-}" == "--no-venv" ]] && want_venv=0

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

# Build, math, messaging, checkpoints, config, logging, CLI, tests (clang + libFuzzer runtime: tests/fuzz), scheduler,
# and the demo corpus (fortunes: real English text in /usr/share/games/fortunes).
debs=(
  build-essential cmake pkg-config git ccache
  libopenblas-dev libopenblas-openmp-dev libdnnl-dev
  libopenmpi-dev openmpi-bin libpmix-dev
  libhdf5-openmpi-dev hdf5-tools
  libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libpcre2-dev libicu-dev  # moe-prep's tokenizer: Oniguruma-style pre-tokenizer regexes on PCRE2, NFC from ICU
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-dev
  slurm-wlm munge
  python3-venv python3-pip
  time  # GNU time: peak RSS of each run in bench/lora_bench.py
  libprotobuf-dev protobuf-compiler libisal-dev  # TensorBoard event files: Event/Summary protobufs, CRC32C (ISA-L)
  libeigen3-dev  # moe-bench's cost model: least-squares fits
  fortunes
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
fi

# cuDNN frontend headers (the header-only C++ API of cuDNN's fused attention, src/backend/cuda/cudnn_sdpa.cpp), only
# where the CUDA toolkit is: the PyPI wheel is downloaded (not installed) and its include/ unpacked into the cache,
# where CMake looks (MOE_CUDNN_FRONTEND_DIR). No download, no cuDNN attention: the build uses the hand kernel.
CFE_VERSION=1.32.0
CFE_DIR="${MOE_CUDNN_FRONTEND_DIR:-$HOME/.cache/moe-train/cudnn-frontend}"
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  if [[ "$(cat "$CFE_DIR/VERSION" 2>/dev/null)" != "$CFE_VERSION" ]]; then
    echo "setup: fetching cuDNN frontend $CFE_VERSION headers into $CFE_DIR"
    cfe_tmp="$(mktemp -d)"
    if python3 -m pip download -q --no-deps --only-binary=:all: "nvidia-cudnn-frontend==$CFE_VERSION" -d "$cfe_tmp" &&
      python3 - "$cfe_tmp" "$CFE_DIR" <<'PY'
import glob, os, shutil, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
shutil.rmtree(os.path.join(dst, "include"), ignore_errors=True)
with zipfile.ZipFile(glob.glob(os.path.join(src, "*.whl"))[0]) as z:
    z.extractall(dst, [n for n in z.namelist() if n.startswith("include/")])
assert os.path.isfile(os.path.join(dst, "include", "cudnn_frontend.h")), "wheel without include/cudnn_frontend.h"
PY
    then
      echo "$CFE_VERSION" > "$CFE_DIR/VERSION"
    else
      echo "setup: WARNING: cuDNN frontend headers not fetched: attention will use the hand-written CUDA kernel" >&2
    fi
    rm -rf "$cfe_tmp"
  else
    echo "setup: cuDNN frontend $CFE_VERSION headers present ($CFE_DIR)"
  fi
fi

# Oracle venv (cached outside the checkout so CI reuses it between runs).
if ((want_venv)); then
  VENV="${MOE_TRAIN_VENV:-$HOME/.cache/moe-train/venv}"
  # mistral-common (with sentencepiece) and protobuf: the Mixtral chat-template oracle (tests/oracle/test_chat_template.py).
  PY_PKGS=(numpy torch transformers safetensors peft tokenizers matplotlib h5py pyyaml pytest bitsandbytes
           "mistral-common[sentencepiece]" protobuf tensorboard)
  stamp="$VENV/.moe-train-ok"
  # The stamp records the package list: a changed list reinstalls into the same venv.
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${PY_PKGS[*]}" ]]; then
    echo "setup: preparing oracle venv in $VENV (${PY_PKGS[*]})"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PY_PKGS[@]}"
    "$VENV/bin/python" -c "import torch, transformers, safetensors, peft, tokenizers, matplotlib, h5py, yaml, pytest, bitsandbytes, mistral_common, sentencepiece, google.protobuf, tensorboard"
    echo "${PY_PKGS[*]}" > "$stamp"
  else
    echo "setup: oracle venv present ($VENV)"
  fi
fi

# transformers-4 venv for the per-expert PEFT layout oracles (tests/oracle/tf4_peft.py): transformers 4.x and the
# PEFT of its time installed on their own, everything else (torch, numpy, safetensors, ...) shared with the oracle
# venv through a .pth file, so torch is not downloaded twice. Its own site-packages come first on sys.path.
if ((want_venv)); then
  VENV4="${MOE_TRAIN_VENV_TF4:-$HOME/.cache/moe-train/venv-tf4}"
  TF4_PKGS=("transformers==4.57.6" "peft==0.17.1")
  stamp4="$VENV4/.moe-train-ok"
  if [[ ! -f "$stamp4" || "$(cat "$stamp4")" != "${TF4_PKGS[*]} on $VENV" ]]; then
    echo "setup: preparing the transformers-4 venv in $VENV4 (${TF4_PKGS[*]}, torch from $VENV)"
    [[ -x "$VENV4/bin/python" ]] || python3 -m venv "$VENV4"
    site4="$("$VENV4/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
    "$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])' > "$site4/moe_train_oracle_venv.pth"
    "$VENV4/bin/pip" install -q "${TF4_PKGS[@]}"
    "$VENV4/bin/python" -c "import torch, transformers, peft; assert transformers.__version__.startswith('4.'), transformers.__version__"
    echo "${TF4_PKGS[*]} on $VENV" > "$stamp4"
  else
    echo "setup: transformers-4 venv present ($VENV4)"
  fi
fi
