#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium for the browser tests.
# Installs it with apt-get when it is missing and we are root; otherwise says why in one line
# and exits non-zero (the browser tests then skip locally and fail in CI).
set -uo pipefail

CHROMIUM="${JOBQ_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_chromium: $CHROMIUM is missing and we are not root; run: sudo apt-get install -y chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM is missing and there is no apt-get; install Chromium by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >/tmp/ensure_chromium.log 2>&1; then
    apt-get update >>/tmp/ensure_chromium.log 2>&1
    if ! apt-get install -y --no-install-recommends chromium >>/tmp/ensure_chromium.log 2>&1; then
        echo "ensure_chromium: apt-get install chromium failed; see /tmp/ensure_chromium.log" >&2
        exit 1
    fi
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "ensure_chromium: chromium installed but $CHROMIUM is not there" >&2
    exit 1
fi
echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
