#!/usr/bin/env bash
# The main job: run the Zeroscope v2 576w text-to-video example workflow headless through ComfyUI's own executor.
# Without the real weights it uses small random stand-ins (the output is noise) and names the folders to fill.
# Extra arguments go to the runner, e.g.  --set "Positive prompt.text=a fox in the snow"  --comfyui ~/ComfyUI
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
ensure_venv
cd "$root"
exec "$VENV/bin/python" -m comfy_runner run example_workflows/zeroscope_v2_576w_text_to_video.json "$@"
