#!/usr/bin/env bash
# Opt-in: installs Debian's `chromium` for tests/test_browser_estimate.py when it is missing (root + apt-get only).
# scripts/test.sh never installs anything; CI's .ci/run calls this first. Quiet, bounded, and never fatal: without a
# browser the test skips and says why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[unet3d] chromium not installed and this is not root with apt-get: the browser test will skip" >&2
  exit 0
fi
echo "[unet3d] installing Debian's chromium for the browser test (apt-get, a few minutes)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq --no-install-recommends chromium; } \
    >/tmp/unet3d-install-chromium.log 2>&1; then
  echo "[unet3d] could not install chromium (log: /tmp/unet3d-install-chromium.log): the browser test will skip" >&2
fi
exit 0
