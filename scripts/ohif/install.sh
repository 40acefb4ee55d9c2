#!/usr/bin/env bash
# Fetch the viewer tools from the npm registry into a cache folder (default
# ~/.cache/dicom-node/viewer, or $DICOM_NODE_VIEWER_CACHE): OHIF's prebuilt app (@ohif/app,
# whose dist/ needs no build) and playwright-core, which drives Debian's chromium (no browser
# download).  Idempotent: a finished install leaves a stamp and is not repeated.
# Usage: scripts/ohif/install.sh [CACHE_DIR]; prints the cache folder.
set -euo pipefail
OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.1
cache=$(realpath -m "${1:-${DICOM_NODE_VIEWER_CACHE:-$HOME/.cache/dicom-node/viewer}}")
stamp="$cache/.installed-ohif-$OHIF_VERSION-playwright-$PLAYWRIGHT_VERSION"
if [ ! -f "$stamp" ]; then
  command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
  # playwright-core 1.65 declares node >= 20 (Debian 12's own nodejs is 18).
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' ||
    { echo "playwright-core $PLAYWRIGHT_VERSION needs Node.js 20 or newer, found $(node --version)" >&2; exit 1; }
  mkdir -p "$cache"
  cd "$cache"
  rm -rf "ohif-$OHIF_VERSION" node_modules package.json package-lock.json
  mkdir "ohif-$OHIF_VERSION"
  # The tarball (about 50 MB) holds the built viewer in package/dist.
  tarball=$(npm pack --silent --pack-destination "ohif-$OHIF_VERSION" "@ohif/app@$OHIF_VERSION")
  tar -xzf "ohif-$OHIF_VERSION/$tarball" -C "ohif-$OHIF_VERSION"
  rm "ohif-$OHIF_VERSION/$tarball"
  echo '{"private": true}' > package.json
  npm install --silent --no-audit --no-fund --save-exact "playwright-core@$PLAYWRIGHT_VERSION"
  touch "$stamp"
fi
echo "$cache"
