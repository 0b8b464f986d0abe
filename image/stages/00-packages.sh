#!/bin/bash
# In the chroot: the runtime packages, nothing for building or debugging.
# Base (b) brings them in the mmdebstrap root already (pinned there); then
# this stage only checks they are all present.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# xwayland: Debian's cage 0.1.4 exits ("Cannot create XWayland server") without
# it, yet does not even recommend it.
pkgs=(python3 python3-venv python3-systemd dcmtk chromium cage xwayland openssl systemd-timesyncd)
# Raspberry Pi OS: its overlayroot makes the root read-only (base (b) has its own initramfs).
[ "${IMAGE_BASE:-raspios}" = raspios ] && pkgs+=(overlayroot)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    [ "${IMAGE_BASE:-raspios}" = raspios ] || { echo "stage 00: missing ${missing[*]}" >&2; exit 1; }
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
