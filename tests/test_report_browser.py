"""The report in a real browser: headless Chromium opens report.html from disk.

Checks: no console or script errors, every image decoded (naturalWidth > 0),
and a screenshot that is not blank. The page's own script records its
self-check into a hidden element that ``--dump-dom`` returns; Chromium's
``--enable-logging=stderr`` adds every console message as a CONSOLE line.
The test set-up installs Debian's chromium as root (tests/setup_check.py) and
otherwise stops the run before the first test: a missing browser is a failure,
not a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btpipe.report import build_report
from report_fixtures import demo_config, make_results
from setup_check import chromium

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio"]


def run_chromium(args, profile: Path, timeout=120) -> subprocess.CompletedProcess:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    make_results(root / "results", n_subjects=6, n_failed=1)
    return build_report(root / "results", demo_config("Browser test"), root / "report" / "report.html")


@pytest.mark.slow
def test_report_loads_without_errors_and_images_decode(report, tmp_path):
    proc = run_chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                         "--dump-dom", report.resolve().as_uri()], tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="report-selfcheck"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert match and match.group(1).strip(), "the page's self-check did not run"
    check = json.loads(match.group(1))
    n_img = len(re.findall(r"<img\b", report.read_text(encoding="utf-8"))) - 1  # minus lightbox
    assert check["images"] == n_img and n_img >= 10
    assert check["broken"] == []
    assert check["errors"] == []
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == []  # the report logs nothing; any console message is a problem
    assert 'data-selfcheck="ok"' in proc.stdout


@pytest.mark.slow
def test_report_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = run_chromium(["--window-size=1280,4000", "--virtual-time-budget=10000",
                         f"--screenshot={shot}", report.resolve().as_uri()], tmp_path / "profile")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), float)
    assert img.shape == (4000, 1280)
    assert img.std() > 20  # text, tables and figures, not one flat colour
    dark = (img < 128).mean()
    assert 0.01 < dark < 0.6  # some ink on a mostly light page
    # The header band (dark) and the gallery images are rendered.
    assert img[:60].mean() < 100
    keep = Path(report.parent) / "screenshot.png"
    shutil.copy(shot, keep)  # left beside the report for a human to look at


@pytest.mark.slow
def test_self_check_catches_broken_image_and_script_error(report, tmp_path):
    """Negative control: the same page with a broken image and a failing script."""
    text = report.read_text(encoding="utf-8")
    bad = text.replace("</main>", '<img src="data:image/png;base64,AAAA" alt="broken">'
                                  "<script>not_defined_function();</script></main>", 1)
    page = tmp_path / "bad.html"
    page.write_text(bad, encoding="utf-8")
    proc = run_chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                         "--dump-dom", page.as_uri()], tmp_path / "profile")
    check = json.loads(re.search(r'<pre id="report-selfcheck"[^>]*>(.*?)</pre>', proc.stdout, re.S).group(1))
    assert check["broken"] == ["broken"]
    assert any("not_defined_function" in e for e in check["errors"])
    assert any("CONSOLE" in line for line in proc.stderr.splitlines())


@pytest.mark.slow
def test_thumbnail_click_opens_lightbox_with_same_image(report, tmp_path):
    probe = ("<script>window.addEventListener('load', function () {"
             "var im = document.querySelector('.card img.zoomable'); im.click();"
             "var box = document.getElementById('lightbox');"
             "var big = document.getElementById('lightbox-img');"
             "document.getElementById('report-selfcheck').setAttribute('data-lightbox',"
             " JSON.stringify({open: box.classList.contains('open'), same: big.src === im.src,"
             " visible: box.getBoundingClientRect().width > 0}));"
             "});</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", probe, 1), encoding="utf-8")
    proc = run_chromium(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()], tmp_path / "profile")
    found = re.search(r'data-lightbox="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert state == {"open": True, "same": True, "visible": True}
