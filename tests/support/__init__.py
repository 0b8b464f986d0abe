"""Helpers the tests share (no tests here): peers, processes, PKI, configurations."""
