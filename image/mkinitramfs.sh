#!/bin/bash
# Build the appliance's initramfs on the build host, for any architecture:
# busybox, the modules of initramfs/modules.txt (with their dependencies, from
# the root's modules.dep) and initramfs/init, as a gzip'd cpio. Nothing runs
# inside the target root, so an arm64 build takes seconds instead of the
# quarter of an hour update-initramfs needs under qemu-user.
#   usage: mkinitramfs.sh ROOT OUTPUT
set -euo pipefail
root=${1:?usage: mkinitramfs.sh ROOT OUTPUT}
out=${2:?usage: mkinitramfs.sh ROOT OUTPUT}
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "mkinitramfs: $*" >&2; exit 1; }

[ -d "$root/lib/modules" ] || fail "no kernel modules in $root/lib/modules"
kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
[ -n "$kver" ] || fail "no kernel modules in $root/lib/modules"
moddir=$root/lib/modules/$kver
[ -x "$root/bin/busybox" ] || fail "$root/bin/busybox missing (busybox-static)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,lib/modules}
cp "$root/bin/busybox" "$work/bin/busybox"
install -m 0755 "$here/initramfs/init" "$work/init"

# Dependencies first, each module once; a module built into this kernel
# (modules.builtin) or absent on this architecture is skipped.
declare -A seen=()
add() {
    local name=$1 path line dep
    line=$(grep -E "(^|/)${name//_/[-_]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1) || return 0
    path=${line%%:*}
    [ -n "${seen[$path]:-}" ] && return 0
    seen[$path]=1
    for dep in ${line#*:}; do
        dep=$(basename "$dep"); add "${dep%%.ko*}"
    done
    install -D -m 0644 "$moddir/$path" "$work/lib/modules/$path"
    echo "$path" >> "$work/lib/modules/order"
}
touch "$work/lib/modules/order"
while read -r module; do
    case $module in ''|'#'*) continue ;; esac
    add "$module"
done < "$here/initramfs/modules.txt"
(cd "$work" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible) \
    | gzip -9n > "$out"
echo "mkinitramfs: $out ($kver, $(wc -l < "$work/lib/modules/order") modules)"
