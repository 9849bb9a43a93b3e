#!/usr/bin/env bash
# Install the system packages the browser test needs (Debian's Chromium), when missing and possible.
# Without root (a laptop), nothing is installed and the browser test skips with a message.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
       "the browser test will be skipped. Install it with: sudo apt-get install chromium" >&2
  exit 0
fi
echo "installing chromium with apt-get (once)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
