"""The RIS side: Modality Worklist (query and cache) and MPPS."""
