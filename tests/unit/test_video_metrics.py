"""The encoder that ran is named in the metrics:
dicom_gateway_video_clips_encoded{encoder="libx264"} counts up per clip."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gateway.dicom import video
from gateway.ops.metrics import GatewayCollector, Sources
from tests.support.dicom_objects import pattern
from tests.support.queue import new_outbox


def _count(root: Path, encoder: str) -> float:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(Sources(root, ["pacs"])))
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f'dicom_gateway_video_clips_encoded_total{{encoder="{encoder}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_clips_encoded_are_counted_by_encoder(tmp_path: Path) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]):
        pass
    stream = video.encode(pattern(3, 64, 48), 25)
    before = _count(tmp_path / "q", stream.encoder)
    assert before >= 1
    video.encode(pattern(3, 64, 48), 25)
    assert _count(tmp_path / "q", stream.encoder) == before + 1
