#!/bin/bash
# In the chroot: the root file system read-only with a RAM overlay, so a power
# cut cannot corrupt it; only /data (queue, identity) is ever written.
# Raspberry Pi OS: overlayroot; base (b): the image's own initramfs
# (image/initramfs/init) mounts the root read-only under a tmpfs overlay.
set -euo pipefail
if [ -f /etc/overlayroot.conf ]; then
    sed -i 's/^overlayroot=.*/overlayroot="tmpfs:recurse=0"/' /etc/overlayroot.conf
fi
# Journald keeps its logs in RAM: the root is read-only and the SD card is spared.
install -d /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\nForwardToSyslog=no\n' \
    > /etc/systemd/journald.conf.d/dicom-gateway.conf
