#!/usr/bin/env bash
# Builds a fixed VHD from a folder tree, the way the tests' on-premises builder
# does: MBR partition table (sfdisk), ext4 root filled from the tree (mkfs.ext4 -d,
# under fakeroot so files belong to root), qemu-img with force_size so the
# virtual size stays a whole number of MiB.
#   make-disk.sh TREE OUT.vhd [COUNTER_FILE]
set -euo pipefail
tree=$1
out=$2
counter=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "$counter" ]; then
  echo built >> "$counter"
fi
truncate -s 64M "$work/disk.raw"
printf 'label: dos\nstart=2048, size=98304, type=83\n' | sfdisk --quiet "$work/disk.raw"
fakeroot mkfs.ext4 -q -F -L cloudimg-rootfs -d "$tree" "$work/root.fs" 48M
dd if="$work/root.fs" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on "$work/disk.raw" "$out"
echo "made $out from $tree"
