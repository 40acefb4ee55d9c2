#!/usr/bin/env bash
# Show a study with the node's results in OHIF and take a screenshot (development aid).
# Needs Orthanc with the DICOMweb plugin on ORTHANC_URL (e.g. `make demo` in another shell),
# npm, and Debian's chromium.  Usage: scripts/ohif/run.sh STUDY_INSTANCE_UID [OUT.png]
set -euo pipefail
study=$1
out=$(realpath -m "${2:-ohif.png}")
here=$(cd "$(dirname "$0")" && pwd)
work=${OHIF_WORK:-/tmp/dicom-node-ohif}
orthanc=${ORTHANC_URL:-http://127.0.0.1:8042}
port=${OHIF_PORT:-8090}
mkdir -p "$work"
cd "$work"
if [ ! -d package/dist ]; then
  npm pack --silent @ohif/app@3.13.2 >/dev/null && tar xzf ohif-app-3.13.2.tgz
fi
[ -d node_modules/playwright-core ] || npm install --silent --no-audit --no-fund playwright-core
python3 "$here/app_config.py" package/dist/app-config.js > app-config.js
python3 "$here/serve.py" package/dist "$orthanc" "$port" app-config.js &
server=$!
trap 'kill $server' EXIT
sleep 1
NODE_PATH="$work/node_modules" node "$here/screenshot.js" \
  "http://127.0.0.1:$port/viewer?StudyInstanceUIDs=$study" "$out"
echo "wrote $out"
