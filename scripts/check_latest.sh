#!/usr/bin/env bash
# The next break before users see it: install hf_pcoh against the newest releases that pyproject.toml's ranges
# allow (no lock), print what was resolved beside the lock, and run the fast tests. Not part of CI.
#   bash scripts/check_latest.sh            # the fast tests (-m "not slow")
#   bash scripts/check_latest.sh -k guard   # extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q --upgrade -e ".[cpu,minilm,test]"
echo "resolved against the newest releases (lock -> now):"
"$work/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/\+cpu$//' | sort > "$work/latest.txt"
grep -v '^#' requirements/lock.txt | sort > "$work/lock.txt"
diff "$work/lock.txt" "$work/latest.txt" | sed -n 's/^> /  now  /p; s/^< /  lock /p' || true
"$work/venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
