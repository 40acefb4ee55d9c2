#!/usr/bin/env bash
# Show a study with the node's results in OHIF and take a screenshot (development aid).
# Needs Orthanc with the DICOMweb plugin on ORTHANC_URL (e.g. `make demo` in another shell),
# npm, and Debian's chromium.  Usage: scripts/ohif/run.sh STUDY_INSTANCE_UID [OUT.png]
set -euo pipefail
study=$1
out=$(realpath -m "${2:-ohif.png}")
here=$(cd "$(dirname "$0")" && pwd)
orthanc=${ORTHANC_URL:-http://127.0.0.1:8042}
port=${OHIF_PORT:-8090}
cache=$("$here/install.sh")
dist="$cache/ohif-3.13.2/package/dist"
config=$(mktemp --suffix=.js)
python3 "$here/app_config.py" "$dist/app-config.js" > "$config"
python3 "$here/serve.py" "$dist" "$orthanc" "$port" "$config" &
server=$!
trap 'kill $server; rm -f "$config"' EXIT
sleep 1
NODE_PATH="$cache/node_modules" timeout 300 node "$here/screenshot.js" \
  "http://127.0.0.1:$port/viewer?StudyInstanceUIDs=$study" "$out"
echo "wrote $out"
