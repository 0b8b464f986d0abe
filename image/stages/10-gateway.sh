#!/bin/bash
# In the chroot: the gateway in its own virtual environment, from the wheel
# build.sh copied to /tmp/dist (base (b) installed it from the host already,
# from wheels for the target), with the build time stamped for the clock guard.
set -euo pipefail
venv=/opt/dicom-gateway/venv
if [ ! -x "$venv/bin/dicom-gateway" ]; then
    # python3-systemd comes from Debian: systemd-python has no wheels.
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --no-cache-dir /tmp/dist/*.whl
fi
site=$("$venv/bin/python3" -c 'import gateway, os; print(os.path.dirname(gateway.__file__))')
echo "BUILD_EPOCH = ${SOURCE_DATE_EPOCH:?}" > "$site/_build.py"
