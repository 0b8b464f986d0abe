"""Running the box: health, watchdog, metrics, audit, clock, certificates, logs, export."""
