#!/bin/bash
# Base (b): the appliance built from Debian's archive only (bookworm), for
# amd64 (a NUC-class box; QEMU q35) or arm64 (a Raspberry Pi 4; QEMU virt).
#   mmdebstrap root (packages from debian/packages.txt, pinned by
#   debian/ARCH.lock when present) → stage-root.sh and the numbered stages in
#   the root (qemu-user for arm64) → the gateway's venv from PyPI wheels for
#   ARCH, installed from the host → initramfs built on the host
#   (mkinitramfs.sh) → boot (FAT, GWBOOT), root (ext4, GWROOT, mounted
#   read-only under a RAM overlay) and data (ext4, GWDATA: queue, identity)
#   partitions, assembled without loop devices.
#   usage: build-debian.sh amd64|arm64     (root)
# Writes out/dicom-gateway-debian-ARCH.img, its kernel and initrd (for QEMU's
# direct boot), and the lock lists of what went in (ARCH.lock, ARCH.pip.lock).
set -euo pipefail
arch=${1:?usage: build-debian.sh amd64|arm64}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$here/out
# shellcheck source=image/base.env
. "$here/base.env"
fail() { echo "image: $*" >&2; exit 1; }
log() { echo "image: $(date -u +%T) $*"; }

case $arch in
    amd64) kernel_pkgs=linux-image-amd64; pyplat=x86_64 ;;
    arm64) kernel_pkgs="linux-image-arm64 raspi-firmware"; pyplat=aarch64 ;;
    *) fail "ARCH must be amd64 or arm64, not '$arch'" ;;
esac
[ "$(id -u)" = 0 ] || fail "must run as root (mmdebstrap, chroot)"
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk cpio python3; do
    command -v "$tool" >/dev/null || fail "missing $tool (make image installs IMAGE_DEB_PACKAGES)"
done
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 2>/dev/null \
        || fail "no binfmt_misc entry for qemu-aarch64 (apt-get install qemu-user-static binfmt-support)"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
mkdir -p "$out"
name=dicom-gateway-debian-$arch
work=$out/$name.work
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
rootdir=$work/root

# Packages: the list, plus the kernel; pinned to exact versions by the lock
# list when the repository has one (LOCK=refresh ignores it to take the
# archive's current versions, and writes a new one).
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/debian/packages.txt")
# shellcheck disable=SC2206
pkgs+=($kernel_pkgs)
lock=$here/debian/$arch.lock
if [ -f "$lock" ] && [ "${LOCK:-}" != refresh ]; then
    mapfile -t pkgs < <(awk 'NF == 2 && $1 !~ /^#/ {print $1 "=" $2}' "$lock")
    log "packages pinned by ${lock#"$repo"/} (${#pkgs[@]})"
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -n "${SNAPSHOT:-}" ] && mirror=http://snapshot.debian.org/archive/debian/$SNAPSHOT
log "mmdebstrap bookworm $arch from $mirror"
# The kernel's postinst would run update-initramfs inside the root (a quarter
# of an hour under qemu-user for arm64): it is diverted while the root is
# made, and mkinitramfs.sh builds the initramfs on the host instead.
mmdebstrap --quiet --arch="$arch" --variant=apt --format=directory \
    --components="main non-free-firmware" \
    --aptopt='APT::Install-Recommends "false"' \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --include="$(IFS=,; echo "${pkgs[*]}")" \
    --customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f '\${Package}:\${Architecture} \${Version}\n' > '$work/dpkg.lock'" \
    bookworm "$rootdir" \
    "deb $mirror bookworm main non-free-firmware" \
    "deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main non-free-firmware" \
    || fail "mmdebstrap failed (a pinned version no longer in the archive? make image LOCK=refresh)"
{
    echo "# Debian packages of the $arch appliance, written by image/build-debian.sh."
    sed 's/:\(amd64\|arm64\|all\) / /' "$work/dpkg.lock" | sort
} > "$out/$arch.lock"

# The gateway's venv: Debian's python3 (and python3-systemd, which has no
# wheels), the rest from PyPI wheels for this architecture, fetched and
# unpacked by the host's pip: nothing is compiled or emulated.
log "gateway venv from wheels for $pyplat"
venv=/opt/dicom-gateway/venv
chroot "$rootdir" python3 -m venv --without-pip --system-site-packages "$venv"
pyver=$(chroot "$rootdir" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site=$rootdir$venv/lib/python$pyver/site-packages
python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo"
python3 - "$repo/pyproject.toml" > "$work/requirements.txt" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith("systemd-python")))
PY
platforms=()
for glibc in 2014 _2_28 _2_31 _2_34 _2_35; do
    [ "$glibc" = 2014 ] && platforms+=(--platform "manylinux2014_$pyplat") \
        || platforms+=(--platform "manylinux${glibc}_$pyplat")
done
python3 -m pip install -q --no-compile --disable-pip-version-check --target "$site" \
    "${platforms[@]}" --python-version "$pyver" --implementation cp --only-binary=:all: \
    -r "$work/requirements.txt" || fail "pip could not fetch the gateway's wheels for $pyplat"
python3 -m pip install -q --no-compile --no-deps --target "$site" "$work"/dist/*.whl
rm -rf "${site:?}/bin"
printf '#!%s/bin/python3\nimport sys\nfrom gateway.app.cli import main\nsys.exit(main())\n' "$venv" \
    > "$rootdir$venv/bin/dicom-gateway"
chmod 0755 "$rootdir$venv/bin/dicom-gateway"
python3 -m pip list --path "$site" --format=freeze > "$out/$arch.pip.lock"

# The same stages as base (a), in the root (stage 00 finds its packages there).
"$here/stage-root.sh" "$rootdir" "$repo"
"$here/debian/system.sh" "$rootdir" "$arch"
for stage in "$here"/stages/[0-9][0-9]-*.sh; do
    log "stage $(basename "$stage")"
    install -m 0755 "$stage" "$rootdir/tmp/stage.sh"
    chroot "$rootdir" env SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" IMAGE_BASE=debian /tmp/stage.sh
done
rm -f "$rootdir/tmp/stage.sh"
# Byte code compiled once here for the target's interpreter would need the
# emulator; the read-only root just never caches it (PYTHONDONTWRITEBYTECODE).

log "initramfs"
kver=$(find "$rootdir/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
"$here/mkinitramfs.sh" "$rootdir" "$out/$name.initrd"
cp "$rootdir/boot/vmlinuz-$kver" "$out/$name.vmlinuz"

# Boot partition: the kernel and initramfs (and on arm64 the Pi firmware with
# its config.txt and cmdline.txt); the installer's identity file goes here.
boot=$work/boot
mkdir -p "$boot"
cp "$out/$name.vmlinuz" "$boot/vmlinuz"
cp "$out/$name.initrd" "$boot/initrd.img"
cmdline="root=LABEL=GWROOT rootwait console=tty1 quiet"
if [ "$arch" = arm64 ]; then
    cp -r "$rootdir"/usr/lib/raspi-firmware/. "$boot/" 2>/dev/null || true
    cp "$rootdir"/usr/lib/linux-image-"$kver"/broadcom/bcm2711-rpi-4-b.dtb "$boot/" 2>/dev/null || true
    printf 'arm_64bit=1\nenable_uart=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n' > "$boot/config.txt"
    echo "$cmdline console=ttyS1,115200" > "$boot/cmdline.txt"
else
    echo "$cmdline console=ttyS0,115200" > "$boot/cmdline.txt"
fi
rm -rf "${rootdir:?}"/boot/* "${rootdir:?}"/var/cache/apt/* "${rootdir:?}"/var/lib/apt/lists/*
mkdir -p "$rootdir/boot/firmware"

# Data partition skeleton: the queue, the screen's settings and the station's
# configuration (the template first boot fills in), for the gateway's group
# (systemd-tmpfiles sets the exact owners and modes at every boot).
data=$work/data
gid=$(chroot "$rootdir" getent group dicom-gateway | cut -d: -f3)
install -d -m 0750 -g "$gid" "$data/config" "$data/config/tls" "$data/ui-state"
install -d -m 2770 -g "$gid" "$data/queue"
install -m 0644 "$here/files/gateway.toml.template" "$data/config/"

log "partitions"
boot_mb=256
root_mb=$(( $(du -sm "$rootdir" | cut -f1) * 13 / 10 + 200 ))
data_mb=${DATA_MB:-4096}
img=$out/$name.img
rm -f "$img" "$work"/*.part
mkfs.vfat -n GWBOOT -i 0D1C0A7E -C "$work/boot.part" $((boot_mb * 1024)) >/dev/null
mcopy -s -m -i "$work/boot.part" "$boot"/* ::/
mkfs.ext4 -q -L GWROOT -U clear -E root_owner=0:0,hash_seed=00000000-0000-0000-0000-000000000000 \
    -d "$rootdir" "$work/root.part" "${root_mb}M"
mkfs.ext4 -q -L GWDATA -E root_owner=0:0 -d "$data" "$work/data.part" "${data_mb}M"
total_mb=$((1 + boot_mb + root_mb + data_mb))
truncate -s "${total_mb}M" "$img"
sfdisk --quiet "$img" <<SFDISK
label: dos
label-id: 0x0d1c0a7e
start=1MiB, size=${boot_mb}MiB, type=c, bootable
size=${root_mb}MiB, type=83
size=${data_mb}MiB, type=83
SFDISK
dd if="$work/boot.part" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.part" of="$img" bs=1M seek=$((1 + boot_mb)) conv=notrunc,sparse status=none
dd if="$work/data.part" of="$img" bs=1M seek=$((1 + boot_mb + root_mb)) conv=notrunc,sparse status=none
log "wrote $img ($total_mb MiB: boot $boot_mb, root $root_mb, data $data_mb; $(du -sm "$img" | cut -f1) MiB allocated)"
