#!/usr/bin/env bash
# Installs the Debian packages the tests need, when they are missing:
#   mosquitto          a second, independent broker (stand-in for HiveMQ/EMQX)
#   mosquitto-clients  mosquitto_pub/_sub: real clients nobody here wrote
#   python3-statsmodels  ships the Nile river series (real data for the anomaly model)
#   espeak-ng, sox     synthesised speech at 16 kHz (real audio for the vad model)
#   darknet            real photos: dog, person, eagle, giraffe, horses (detect model)
#   python3-skimage    a real scanned page, skimage/data/page.png (ocr model)
#   fonts-dejavu-core  a TrueType font to render meter readings with known text (ocr model)
#   python3-onnx, python3-numpy  build the small ONNX graphs the model repository tests serve
#   chromium           a headless browser that drives the dashboard (tests/dashboard_test.go, chromedp)
# Runs as root (CI) or through sudo when available.
set -euo pipefail
pkgs=(mosquitto mosquitto-clients python3-statsmodels espeak-ng sox darknet python3-skimage fonts-dejavu-core python3-onnx python3-numpy chromium)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing test packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# Do not let the package start a system mosquitto on port 1883: the tests
# start their own brokers on free ports, and `make run` wants 1883.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod +x "$policy"
	created_policy=1
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ -n "$created_policy" ] && $sudo rm -f "$policy"
exit 0
