#!/usr/bin/env bash
# The next break before users see it: install hf_pcoh against the newest releases that pyproject.toml's ranges
# allow (no lock) in a throwaway venv, print how they differ from requirements/lock.txt, and run the fast tests.
# Not part of CI.
#   bash scripts/check_latest.sh                # the fast tests (-m "not slow")
#   bash scripts/check_latest.sh -k guard       # extra pytest arguments
#   bash scripts/check_latest.sh --write-lock   # then, if they pass, write that tree as the new requirements/lock.txt
#
# Why a fresh venv + `pip freeze` for the lock, not pip-compile or uv: pip-tools drives pip's private resolver API and
# has broken with pip releases before, and uv does not look in the local wheel folder that holds the CPU build of
# torch on these machines (it would lock a CUDA build). A venv resolved by the same pip that installs from the lock
# records exactly the tree a user gets, and the tests run on it before it is written.
set -euo pipefail
cd "$(dirname "$0")/.."

write_lock=""
if [ "${1:-}" = "--write-lock" ]; then write_lock=1; shift; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q --upgrade -e ".[cpu,minilm,test]"
"$work/venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+cpu$/\1/' > "$work/latest.txt"
echo "resolved against the newest releases (lock -> now):"
diff <(grep -v '^#' requirements/lock.txt | sort) <(sort "$work/latest.txt") | sed -n 's/^> /  now  /p; s/^< /  lock /p' || true
"$work/venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
if [ -n "$write_lock" ]; then
  {
    echo "# The dependency tree the README's install uses (pip install -c requirements/lock.txt)."
    echo "# Regenerate with: bash scripts/check_latest.sh --write-lock  (resolved on $(date -u +%F) with" \
         "$("$work/venv/bin/python" -m pip --version | cut -d' ' -f1-2), $("$work/venv/bin/python" --version))"
    cat "$work/latest.txt"
  } > requirements/lock.txt
  echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
fi
