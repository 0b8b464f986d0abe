"""In-process tests: no peer, no subprocess."""
