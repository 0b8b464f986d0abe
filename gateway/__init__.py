"""dicom-edge-gateway: capture → DICOM → durable queue → C-STORE over TLS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicom-edge-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
