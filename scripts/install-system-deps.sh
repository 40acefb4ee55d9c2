#!/usr/bin/env bash
# Debian packages the demo and the tests use: Orthanc (the PACS) with its DICOMweb plugin,
# DCMTK (third-party DICOM clients), dicom3tools (dciodvfy, the IOD validator), openssl,
# chromium with Node.js/npm for the browser test, and PostgreSQL (the tests start throwaway
# clusters of their own with initdb/pg_ctl).  Installs only what is missing.
set -euo pipefail
need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
# openssl makes the test certificates for DICOM TLS.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# DICOMweb lets a web viewer (OHIF) read the results from Orthanc.
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
# The browser test and `OHIF=1 make demo`: Node.js and npm fetch OHIF and playwright-core,
# which drives Debian's chromium headless (with a font, so pages render text).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
# The scale-out tests: a shared job log on a real PostgreSQL server.
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package may start a system Orthanc on 4242/8042; the demo runs its own.
# Likewise the package's own PostgreSQL cluster on 5432: the tests start theirs.
if command -v systemctl >/dev/null 2>&1; then
  for service in orthanc postgresql; do
    if systemctl is-active --quiet "$service" 2>/dev/null; then
      $sudo systemctl stop "$service" || true
    fi
  done
fi
