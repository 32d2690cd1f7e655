#!/usr/bin/env bash
# The test command: creates (or reuses) a cached virtualenv keyed by requirements/test.txt, provisions the
# embedded ComfyUI host, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
ensure_venv
cd "$root"
exec "$VENV/bin/python" -m pytest "$@"
