#!/bin/bash
# Base (b) only: what Raspberry Pi OS already brings and a bare Debian root
# does not — the boot partition in fstab, a host name, DHCP on the wired port,
# and service access by SSH key for the installer (off unless a key is given).
#   usage: system.sh ROOT ARCH
set -euo pipefail
root=${1:?usage: system.sh ROOT ARCH}

grep -q 'LABEL=GWBOOT' "$root/etc/fstab" \
    || echo 'LABEL=GWBOOT  /boot/firmware  vfat  defaults,noatime,fmask=0077,dmask=0077  0  2' >> "$root/etc/fstab"
echo dicom-gateway > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdicom-gateway\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$root/etc/hosts"
install -d "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/20-wired.network"

# Service access: /boot/firmware/authorized_keys (as a Pi user drops `ssh` on
# the boot partition) is moved to /data/ssh on boot; sshd runs only when the
# data partition holds a key, with host keys made there on first use.
install -d "$root/etc/ssh/sshd_config.d" "$root/etc/systemd/system/ssh.service.d"
cat > "$root/etc/ssh/sshd_config.d/dicom-gateway.conf" <<'SSHD'
HostKey /data/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /data/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
SSHD
printf '[Unit]\nConditionPathExists=/data/ssh/authorized_keys\nAfter=dicom-gateway-service-access.service\n' \
    > "$root/etc/systemd/system/ssh.service.d/dicom-gateway.conf"
# Byte code compiled here (the host's python3 is the target's version, and
# .pyc files do not depend on the architecture): the read-only root would
# otherwise recompile the gateway into RAM on every boot.
python3 -m compileall -q -j0 --invalidation-mode unchecked-hash "$root/opt/dicom-gateway/venv/lib" >/dev/null
chroot "$root" systemctl --quiet enable systemd-networkd.service dicom-gateway-service-access.service ssh.service
chroot "$root" systemctl --quiet set-default graphical.target
