#!/usr/bin/env bash
# The main job: run the Zeroscope v2 576w text-to-video example workflow headless through ComfyUI's own executor.
# Without the real weights it uses small random stand-ins (the output is noise) and names the folders to fill.
# A workflow .json as the first argument replaces it. Other arguments go to the runner, e.g.  --set "Positive prompt.text=a fox in the snow"  --comfyui ~/ComfyUI
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
ensure_venv
cd "$root"
workflow=example_workflows/zeroscope_v2_576w_text_to_video.json
if [ $# -gt 0 ] && [[ "$1" == *.json ]]; then workflow="$1"; shift; fi   # another workflow as the first argument
exec "$VENV/bin/python" -m comfy_runner run "$workflow" "$@"
