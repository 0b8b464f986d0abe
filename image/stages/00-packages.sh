#!/bin/bash
# In the chroot: the runtime packages, nothing for building or debugging.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# xwayland: Debian's cage 0.1.4 exits ("Cannot create XWayland server") without
# it, yet does not even recommend it.
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv dcmtk chromium cage xwayland openssl overlayroot systemd-timesyncd
apt-get clean
rm -rf /var/lib/apt/lists/*
