"""dicom-edge-gateway: capture → DICOM → durable queue → C-STORE over TLS."""

# The one place the version is written (pyproject.toml reads it from here):
# asking importlib.metadata instead costs every command ~10 ms of start-up.
__version__ = "0.1.0"
