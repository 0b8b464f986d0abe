#!/bin/bash
# In the chroot: the gateway in its own virtual environment, from the wheel
# build.sh copied to /tmp/dist, with the build time stamped for the clock guard.
set -euo pipefail
python3 -m venv /opt/dicom-gateway/venv
/opt/dicom-gateway/venv/bin/pip install -q --no-cache-dir /tmp/dist/*.whl
site=$(/opt/dicom-gateway/venv/bin/python -c 'import gateway, os; print(os.path.dirname(gateway.__file__))')
echo "BUILD_EPOCH = ${SOURCE_DATE_EPOCH:?}" > "$site/_build.py"
