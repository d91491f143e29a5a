#!/usr/bin/env bash
# Regenerate requirements/lock.txt: the whole resolved dependency tree that the README's commands install.
#   bash scripts/lock.sh            # resolve pyproject.toml's ranges afresh, run the fast tests, write the lock
#
# Why a fresh venv + `pip freeze` and not pip-compile or uv: pip-tools drives pip's private resolver API and has
# broken with pip releases before, and uv does not look in the local wheel folder that holds the CPU build of torch
# on these machines (it would lock a CUDA build). A fresh venv resolved by the same pip that installs from the lock
# records exactly the tree a user gets, and the tests run on it before it is written.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -e ".[cpu,minilm,test]"
"$work/venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider
{
  echo "# The dependency tree the README's install uses (pip install -c requirements/lock.txt)."
  echo "# Regenerate with: bash scripts/lock.sh  (resolved on $(date -u +%F) with $("$work/venv/bin/python" -m pip --version | cut -d' ' -f1-2), $("$work/venv/bin/python" --version))"
  "$work/venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+cpu$/\1/'
} > requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
