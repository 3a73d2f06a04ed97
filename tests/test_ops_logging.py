"""
JSON logs from the real daemon: twistd's C{--logger} option with
L{ocicache.json_observer}, and C{log_format = "json"} honouring
twistd's C{--logfile}.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA
from ocitest.ops import launch
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)


def _lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


@pytest.mark.parametrize("how", ["--logger", "log_format+--logfile"])
def test_json_logs(tmp_path: os.PathLike[str], hop: Hop, upstream: Registry, how: str) -> None:
    workdir = str(tmp_path)
    port = free_port()
    config = write_config(os.path.join(workdir, "ocicache.toml"), port=port,
                          cache_dir=os.path.join(workdir, "cache"),
                          upstreams=[Upstream("docker.io", hop.url, default=True)],
                          server_extra={"log_format": "json" if how != "--logger" else "text"})
    logfile = os.path.join(workdir, "json.log")
    twistd_args = (["--logger", "ocicache.json_observer"] if how == "--logger"
                   else ["--logfile", logfile])
    daemon = launch(config, workdir, twistd_args=twistd_args, wait_url=f"http://127.0.0.1:{port}/v2/")
    try:
        image = upstream.images["oci"]
        status, _, _ = http_request(f"http://127.0.0.1:{port}/v2/{image.repo}/manifests/{image.tag}",
                                    headers={"Accept": ACCEPT})
        assert status == 200
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == -signal.SIGTERM
    finally:
        daemon.stop()
    if how == "--logger":
        text = daemon.log_text()  # standard output
    else:
        with open(logfile) as f:
            text = f.read()
        assert "Traceback" not in daemon.log_text()
    events = _lines(text)
    assert events[0]["message"].startswith("twistd ")
    access = [e for e in events if e["namespace"] == "ocicache.access"]
    assert [(e["method"], e["path"], e["status"], e["cache_result"], e["upstream"]) for e in access] == [
        ("GET", "/v2/", 200, "-", "-"),
        ("GET", f"/v2/{image.repo}/manifests/{image.tag}", 200, "miss", "docker.io"),
    ]
    assert access[1]["bytes"] == len(image.manifest_bytes)
    assert isinstance(access[1]["duration"], float)
    assert all({"time", "level", "namespace", "message"} <= set(e) for e in events)
    assert any(e["message"] == "ocicache stopped" for e in events)
