#!/bin/bash
# In the chroot: the user, directories and enabled units (staged by
# stage-root.sh before the chroot ran), then no login but the kiosk.
set -euo pipefail
systemd-sysusers
systemd-tmpfiles --create /usr/lib/tmpfiles.d/dicom-gateway.conf || true
systemctl enable systemd-timesyncd.service
systemctl disable userconfig.service 2>/dev/null || true  # no first-boot user wizard
systemctl mask getty@tty1.service                        # the kiosk owns the screen
