"""The touchscreen's API and pages, one module per resource."""
