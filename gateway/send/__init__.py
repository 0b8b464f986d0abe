"""Queued objects out to the PACS: the forwarder, its destinations, Storage Commitment."""
