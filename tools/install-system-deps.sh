#!/usr/bin/env bash
# Install the system packages the tests need, when missing and possible: Debian's Chromium, and a Chinese
# font so that the bilingual headings show in screenshots (a student's own browser has its fonts); g++,
# protoc and libprotobuf, with which python -m helpers.engine builds its runner for NVIDIA's engine.
# Without root (a laptop), nothing is installed and those tests skip with a message.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
command -v g++ >/dev/null || missing+=(g++)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/message.h ] || missing+=(libprotobuf-dev)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} missing and cannot be installed here (needs root and apt-get);" \
       "the browser and engine-build tests may be skipped. Install with: sudo apt-get install ${missing[*]}" >&2
  exit 0
fi
echo "installing ${missing[*]} with apt-get (once)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
