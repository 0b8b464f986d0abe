#!/bin/bash
# In the chroot: nothing that identifies or unlocks one box may ship in all
# of them. Host keys are made on first boot; no password, no key, no PIN.
set -euo pipefail
rm -f /etc/ssh/ssh_host_*
rm -f /etc/dicom-gateway/gateway.toml /etc/dicom-gateway/pin /etc/dicom-gateway/tls/*
passwd -l root
: > /etc/machine-id
