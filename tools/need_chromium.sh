#!/usr/bin/env bash
# `make test` opens the built book in headless Chromium (tools/browser_check.py). Run first: when
# chromium is missing, install the Debian package where this user may (root, or sudo without a
# password); otherwise stop at once with the one instruction that fixes it.
set -u
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && exit 0
install='apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'
if [ "$(id -u)" = 0 ]; then
  sh -c "$install" >/dev/null 2>&1
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo -n sh -c "$install" >/dev/null 2>&1
fi
if command -v chromium >/dev/null 2>&1; then
  echo "make test: installed chromium for the browser check" >&2
  exit 0
fi
echo "make test: the browser check needs Chromium; install it first (Debian/Ubuntu: sudo apt-get install chromium), then run make test again" >&2
exit 1
