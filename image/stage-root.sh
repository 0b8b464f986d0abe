#!/bin/bash
# Put the gateway's system files into a root tree (the image's root partition
# or a scratch directory in tests) and enable the units, without a chroot:
# everything here is files and symlinks, so it runs on any Debian machine.
#   usage: stage-root.sh ROOT [REPO]
set -euo pipefail
root=${1:?usage: stage-root.sh ROOT [REPO]}
repo=${2:-$(cd "$(dirname "$0")/.." && pwd)}
here=$repo/image

install -d -m 0755 "$root/etc/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/usr/local/sbin" "$root/etc/dicom-gateway"
for unit in "$repo"/systemd/*.service "$here"/files/*.service; do
    install -m 0644 "$unit" "$root/etc/systemd/system/"
done
install -m 0644 "$repo/systemd/sysusers.d/dicom-gateway.conf" "$root/usr/lib/sysusers.d/"
install -m 0644 "$repo/systemd/tmpfiles.d/dicom-gateway.conf" "$root/usr/lib/tmpfiles.d/"
install -m 0755 "$here/files/dicom-gateway-firstboot" "$here/files/dicom-gateway-service-access" "$root/usr/local/sbin/"
install -m 0644 "$here/files/gateway.toml.template" "$root/etc/dicom-gateway/gateway.toml.template"

# The data partition (label GWDATA) holds the queue and the station's identity;
# the root file system stays read-only under an overlay.
mkdir -p "$root/data" "$root/var/lib/dicom-gateway" "$root/var/lib/dicom-gateway-ui"
fstab=$root/etc/fstab
touch "$fstab"
grep -q 'LABEL=GWDATA' "$fstab" || cat >> "$fstab" <<'FSTAB'
LABEL=GWDATA  /data  ext4  defaults,noatime,commit=5,errors=remount-ro  0  2
/data/queue   /var/lib/dicom-gateway  none  bind,x-systemd.requires-mounts-for=/data  0  0
/data/config  /etc/dicom-gateway      none  bind,x-systemd.requires-mounts-for=/data  0  0
/data/ui-state  /var/lib/dicom-gateway-ui  none  bind,x-systemd.requires-mounts-for=/data  0  0
FSTAB

# Enable exactly as `systemctl enable` does, from the units' [Install] sections.
systemctl --root="$root" --quiet enable \
    dicom-gateway.service dicom-gateway-forwarder.service dicom-gateway-firstboot.service
for kiosk in "$root"/etc/systemd/system/dicom-gateway-kiosk*.service; do
    [ -e "$kiosk" ] && systemctl --root="$root" --quiet enable "$(basename "$kiosk")"
done
echo "staged gateway system files into $root"
