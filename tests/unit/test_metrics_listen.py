"""Which metrics address a `run` serves: the forwarder's own process has
its own key, so the appliance's two services never race for one port."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.ops.appliance import metrics_listen

CONFIG = parse_config(
    {
        "station": {"ae_title": "EDGE1"},
        "metrics": {"listen": "127.0.0.1:9108", "forwarder_listen": "127.0.0.1:9109"},
    }
)


def test_capture_and_whole_run_serve_listen() -> None:
    assert metrics_listen(CONFIG, ["capture", "ui", "control"]) == "127.0.0.1:9108"
    assert metrics_listen(CONFIG, ["capture", "ui", "forwarder", "flush"]) == "127.0.0.1:9108"


def test_the_forwarder_alone_serves_its_own_key() -> None:
    assert metrics_listen(CONFIG, ["forwarder", "mpps", "flush"]) == "127.0.0.1:9109"
    quiet = parse_config(
        {"station": {"ae_title": "EDGE1"}, "metrics": {"listen": "127.0.0.1:9108"}}
    )
    assert metrics_listen(quiet, ["forwarder"]) == ""
