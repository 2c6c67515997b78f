# Sourced by scripts/demo and scripts/test: make .venv with the project installed, once.
# Installs the hashed lock (requirements/dev.txt, made by scripts/lock) with --require-hashes, then
# the project itself without dependencies. Re-installs when pyproject.toml or a lock file changes.
# Needs Python 3.11+ and access to PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "voucherify-relay needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

stamp=".venv/.installed-$(cat pyproject.toml requirements/*.txt | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
    "$(pick_python)" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
    pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --require-hashes -r requirements/dev.txt
    # setuptools comes hashed from the lock: no build isolation, so nothing unhashed is fetched.
    "${pip[@]}" --no-deps --no-build-isolation -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi
