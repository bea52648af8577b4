#!/usr/bin/env bash
# Install the Debian tools the tests run as real peers, when they are missing:
#   dciodvfy (dicom3tools)  DICOM conformance checker for every object we write
#   dcmconv, dcmcjpeg (dcmtk)  encodings of the synthetic test series
#   plastimatch             independent RTSTRUCT rasteriser for the round-trip test
#   chromium, chromedriver  headless browser for the status page test
#   Orthanc (orthanc)       PACS of the integration tests, which start their own instance
#                           on free ports and never use the orthanc system service
#   libOrthancDicomWeb.so (orthanc-dicomweb)  Orthanc's DICOMweb plugin, a file, not a command
#   cc (gcc)                builds the small library that keeps test servers on 127.0.0.1
#   openssl                 makes the test CA and certificates of the DICOM TLS tests
set -euo pipefail

declare -A PACKAGE_OF=(
    [dciodvfy]=dicom3tools [dcmconv]=dcmtk [dcmcjpeg]=dcmtk [plastimatch]=plastimatch
    [chromium]=chromium [chromedriver]=chromium-driver
    [Orthanc]=orthanc [cc]=gcc [openssl]=openssl
)
declare -A PACKAGE_OF_FILE=(
    [/usr/share/orthanc/plugins/libOrthancDicomWeb.so]=orthanc-dicomweb
)
missing=()
for tool in "${!PACKAGE_OF[@]}"; do
    # Orthanc is installed in /usr/sbin, which is not on every user's PATH.
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${PACKAGE_OF[$tool]}")
done
for file in "${!PACKAGE_OF_FILE[@]}"; do
    [ -e "$file" ] || missing+=("${PACKAGE_OF_FILE[$file]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: $packages; install them with: sudo apt-get install $packages" >&2
    exit 1
fi
echo "installing Debian packages: $packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $packages >/dev/null
