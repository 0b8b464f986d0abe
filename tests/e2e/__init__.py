"""The whole product as a user meets it: Chromium driving the touchscreen,
systemd running the units, the appliance image."""
