"""Modality Worklist: what the technician picks the patient from."""

from gateway.worklist.model import WorklistEntry, WorklistQuery, WorklistResult

__all__ = ["WorklistEntry", "WorklistQuery", "WorklistResult"]
