#!/usr/bin/env bash
# Chromium for the health page's browser test (tests/stack/test_health_browser.py), from the
# Debian or Ubuntu archive. Unlike the tools install-tools.sh unpacks into .cache, a browser
# needs dozens of system libraries and fonts, so it is installed system-wide with apt-get, as
# root; without root it says the one command to run and stops before any test does.
set -euo pipefail

command -v chromium >/dev/null && exit 0
if [[ $(id -u) != 0 ]]; then
  echo "install-chromium: the browser test needs Chromium: run \`sudo apt-get install chromium\`, then make again" >&2
  exit 1
fi
command -v apt-get >/dev/null ||
  { echo "install-chromium: needs apt-get (Debian or Ubuntu); elsewhere install Chromium yourself" >&2; exit 1; }
echo "install-chromium: installing Debian's chromium with apt-get (headless, for the health page's browser test)" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
