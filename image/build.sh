#!/bin/bash
# Build the appliance image on a Debian machine (root, x86-64 or arm64).
#   BASE=raspios (default): pinned Raspberry Pi OS Lite arm64 → grown root +
#     data partition → staged files → numbered stages in an arm64 chroot
#     (qemu-user-static) → image/out/dicom-gateway.img.
#   BASE=debian ARCH=amd64|arm64: the same stages on a root made from
#     Debian's archive only (build-debian.sh).
# Reproducible: fixed base by sha256, SOURCE_DATE_EPOCH from the last commit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$here/out
fail() { echo "image: $*" >&2; exit 1; }
case ${BASE:-raspios} in
    debian) exec "$here/build-debian.sh" "${ARCH:-amd64}" ;;
    raspios) ;;
    *) fail "BASE must be raspios or debian, not '$BASE'" ;;
esac
base_env=${IMAGE_BASE_ENV:-$here/base.env}
# shellcheck source=image/base.env
. "$base_env"

[[ "$BASE_SHA256" =~ ^[0-9a-f]{64}$ ]] || fail "BASE_SHA256 in ${base_env#"$repo"/} is not pinned; copy it from $BASE_URL.sha256"
[ "$(id -u)" = 0 ] || fail "must run as root (loop devices, mounts, chroot)"
for tool in curl xz sha256sum parted losetup mkfs.ext4 e2fsck resize2fs qemu-aarch64-static; do
    command -v "$tool" >/dev/null || fail "missing $tool (apt-get install curl xz-utils parted e2fsprogs qemu-user-static binfmt-support)"
done
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}

mkdir -p "$out"
base=$out/$(basename "$BASE_URL")
if [ ! -f "$base" ]; then
    curl -fsL --retry 2 --connect-timeout 20 -o "$base.part" "$BASE_URL" || {
        rm -f "$base.part"
        fail "cannot download $BASE_URL (offline?); put the file at $base, or build from Debian's archive: make image BASE=debian ARCH=arm64"
    }
    mv "$base.part" "$base"
fi
echo "$BASE_SHA256  $base" | sha256sum -c --quiet || fail "$base does not match BASE_SHA256"
# The checksum published next to the image, when it can be fetched, must agree.
if published=$(curl -fsSL --connect-timeout 20 "$BASE_URL.sha256" 2>/dev/null); then
    [ "${published%% *}" = "$BASE_SHA256" ] || fail "$BASE_URL.sha256 says ${published%% *}, base.env says $BASE_SHA256"
fi
img=$out/dicom-gateway.img
xz -dc "$base" > "$img"

# Grow the root partition and add the data partition (label GWDATA).
truncate -s +$((ROOT_GROW_MB + DATA_MB))M "$img"
root_end=$(parted -ms "$img" unit MiB print | awk -F: '$1=="2"{sub("MiB","",$3); print $3}')
parted -s "$img" resizepart 2 $((${root_end%.*} + ROOT_GROW_MB))MiB
parted -s "$img" mkpart primary ext4 $((${root_end%.*} + ROOT_GROW_MB))MiB 100%
loop=$(losetup -Pf --show "$img")
mnt=$(mktemp -d)
cleanup() {
    umount -R "$mnt" 2>/dev/null || true
    losetup -d "$loop" 2>/dev/null || true
}
trap cleanup EXIT
e2fsck -pf "${loop}p2" && resize2fs "${loop}p2"
mkfs.ext4 -q -L GWDATA -E root_owner=0:0 "${loop}p3"
mount "${loop}p2" "$mnt"
mount "${loop}p1" "$mnt/boot/firmware"
mkdir -p "$mnt/data" && mount "${loop}p3" "$mnt/data"
install -d -m 0750 "$mnt/data/queue" "$mnt/data/config"
cp "$mnt/etc/dicom-gateway/gateway.toml.template" "$mnt/data/config/" 2>/dev/null || true

# Files first (no chroot needed), then the wheel, then the stages in the chroot.
"$here/stage-root.sh" "$mnt" "$repo"
(cd "$repo" && python3 -m pip wheel -q --no-deps -w "$mnt/tmp/dist" .)
cp /usr/bin/qemu-aarch64-static "$mnt/usr/bin/"
for fs in proc sys dev; do mount --rbind "/$fs" "$mnt/$fs"; done
for stage in "$here"/stages/[0-9][0-9]-*.sh; do
    echo "image: stage $(basename "$stage")"
    install -m 0755 "$stage" "$mnt/tmp/stage.sh"
    chroot "$mnt" env SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" IMAGE_BASE=raspios /tmp/stage.sh
done
rm -rf "$mnt/tmp/stage.sh" "$mnt/tmp/dist" "$mnt/usr/bin/qemu-aarch64-static"
umount -R "$mnt/proc" "$mnt/sys" "$mnt/dev"
echo "image: wrote $img (copy gateway-identity.toml to its boot partition before first boot)"
