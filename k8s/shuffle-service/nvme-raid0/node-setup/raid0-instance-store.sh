#!/usr/bin/env bash
# Stripes a node's instance-store NVMe drives into one RAID0 array mounted at /mnt/k8s-disks/0,
# for the shuffle service's nvme-raid0 mode. Run it as root from the node's boot script before
# the kubelet starts (EKS launch template user data, pre-bootstrap), then label the node
# spark.example.com/nvme-raid0=true (e.g. --node-labels in the kubelet arguments). Idempotent:
# an existing array is assembled and mounted again after a reboot; with no instance-store drive
# it does nothing and exits 0 (the node then gets no label and runs no shuffle service).
set -euo pipefail

mount_point=/mnt/k8s-disks/0
md=/dev/md0
mapfile -t drives < <(ls /dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_* 2>/dev/null | grep -v -- '-ns-' || true)
if [ "${#drives[@]}" -eq 0 ]; then
  echo "raid0-instance-store: no instance-store NVMe drive" >&2
  exit 0
fi
if mountpoint -q "$mount_point"; then
  exit 0
fi
if [ ! -e "$md" ]; then
  mdadm --assemble "$md" "${drives[@]}" 2>/dev/null \
    || mdadm --create "$md" --level=0 --raid-devices="${#drives[@]}" --run "${drives[@]}"
fi
if ! blkid "$md" >/dev/null 2>&1; then
  mkfs.xfs -q -L k8s-disks "$md"
fi
mkdir -p "$mount_point"
mount -o defaults,noatime,nodiratime "$md" "$mount_point"
mkdir -p "$mount_point/spark/local" "$mount_point/spark/shuffle-state"
echo "raid0-instance-store: ${#drives[@]} drive(s) at $mount_point"
