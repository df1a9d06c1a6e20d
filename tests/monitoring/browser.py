"""Opening a page in Debian's headless Chromium: what the browser decoded, what it logged, what it drew."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
# Written into the page under test: after `load`, the count of images and of decoded ones, and any
# script error, as attributes of <body> that --dump-dom then shows.
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-decoded', images.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute('data-errors', window.__errors.join(' | '));
});
</script>"""


@dataclasses.dataclass
class PageLoad:
    dom: str
    images: int
    decoded: int
    script_errors: str
    console_errors: list[str]
    network_requests: list[str]


def available() -> bool:
    return Path(CHROMIUM).exists()


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def load(page: Path) -> PageLoad:
    """Loads a copy of `page` with the probe script and returns what the browser reports."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as temp:
        copy = page.parent / f".probe-{page.name}"
        html = page.read_text(encoding="utf-8")
        copy.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        try:
            done = _run(["--dump-dom", copy.as_uri()], Path(temp) / "profile")
        finally:
            copy.unlink(missing_ok=True)
    body = re.search(r"<body([^>]*)>", done.stdout)
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1))) if body else {}
    console = [line for line in done.stderr.splitlines()
               if "CONSOLE" in line and ("ERROR" in line.upper() or "Uncaught" in line)]
    network = [line for line in done.stderr.splitlines() if re.search(r"https?://", line) and "CONSOLE" in line]
    return PageLoad(done.stdout, int(attributes.get("images", -1)), int(attributes.get("decoded", -1)),
                    attributes.get("errors", "?"), console, network)


def screenshot(page: Path, output: Path, size: tuple[int, int] = (1200, 2400)) -> np.ndarray:
    """A screenshot as an RGB(A) array of floats in [0, 1]."""
    from matplotlib.image import imread

    with tempfile.TemporaryDirectory(prefix="chromium-") as temp:
        _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={output}", page.as_uri()], Path(temp) / "profile")
    return imread(str(output))
