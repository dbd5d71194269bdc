#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's browser tests (tests/test_browser_*.py, tests/browser_support.py).
# Playwright only drives it (executable_path=/usr/bin/chromium); never run `playwright install`.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    /usr/bin/chromium --version 2>/dev/null || true
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version 2>/dev/null || true
