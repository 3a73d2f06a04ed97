"""
The status page at the operator listener's C{/} (issue 22, part 3),
loaded in a real browser: Debian's headless Chromium dumps the DOM while
a slow download runs, and the page shows the hit ratio, the download in
flight with its progress, each upstream's circuit, the largest
repositories and the last warnings; it loads no external asset.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, require_binary, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20
ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def chromium(url: str, *args: str) -> str:
    """Headless Chromium's DOM of C{url} (or what C{args} ask of it)."""
    result = subprocess.run(
        [require_binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=2000", *args, url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_status_page_in_chromium_while_a_download_runs(
    daemon_factory: Callable[..., Daemon], upstream: Registry, hop: Hop, tmp_path: os.PathLike[str],
) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    page_url = f"http://127.0.0.1:{metrics_port}/"
    oci, big = upstream.images["oci"], upstream.images["big64"]
    # A miss and a hit.
    for _ in range(2):
        status, _, _ = http_request(f"{daemon.url}/v2/{oci.repo}/manifests/{oci.tag}", headers=ACCEPT)
        assert status == 200
    for blob in oci.blobs:
        assert http_request(f"{daemon.url}/v2/{oci.repo}/blobs/{blob.digest}")[0] == 200
    # ghcr.io fails 5 times in a row: its circuit opens, which is logged.
    hop.down = True
    for attempt in range(5):
        status, _, _ = http_request(f"{daemon.url}/v2/ghcr.io/{oci.repo}/manifests/down-{attempt}",
                                    headers=ACCEPT)
        assert status == 502
    hop.down = False

    layer = big.layers[0]
    hop.throttle = 4 * MiB
    results: list[int] = []
    pulling = threading.Thread(target=lambda: results.append(
        http_request(f"{daemon.url}/v2/{big.repo}/blobs/{layer.digest}", timeout=120)[0]))
    pulling.start()
    try:
        wait_for(lambda: any(layer.digest in r.path for r in hop.in_flight()), timeout=20,
                 what="the download to start upstream")
        dom = chromium(page_url, "--dump-dom")
        # $OCITEST_STATUS_SCREENSHOT keeps it: docs/operations/status-page.png is made so.
        screenshot = os.environ.get("OCITEST_STATUS_SCREENSHOT") or os.path.join(str(tmp_path), "status.png")
        chromium(page_url, f"--screenshot={os.path.abspath(screenshot)}", "--window-size=1100,1000",
                 "--hide-scrollbars")
    finally:
        hop.throttle = None
        pulling.join(120)
    assert results == [200]

    # The figures: 1 hit of 7 lookups (the manifest twice, 4 blobs, the big one in flight).
    assert re.search(r'id="hit-ratio">hit ratio<b>14.3%</b>1 of 7 lookups', dom), dom[:3000]
    assert re.search(r'id="downloads">downloads<b>1</b>', dom), dom[:3000]
    # The download, with a progress bar part way.
    row = re.search(rf"<code>{layer.digest}</code></td><td><progress max=\"{layer.size}\" value=\"(\d+)\">", dom)
    assert row is not None, dom
    assert 0 < int(row.group(1)) < layer.size
    # Each upstream's circuit.
    assert re.search(r'<td>docker.io</td><td><span class="closed">closed</span></td>', dom), dom
    assert re.search(r'<td>ghcr.io</td><td><span class="open">open \(\d+s\)</span></td><td>5</td>', dom), dom
    # The largest repositories, and the warning the down upstream caused.
    assert f"<td>docker.io/{oci.repo}</td>" in dom
    assert "no pins" in dom
    assert re.search(r"<td>warn</td><td>ghcr.io: circuit open after 5 failures in a row", dom), dom
    # No external asset: nothing to fetch but the page.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", dom)

    with open(screenshot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
