"""Headless Chromium for the HTML report tests (profile, explain)."""

from __future__ import annotations

import re
import shutil
import subprocess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def images_loaded(page, tmp_path) -> str:
    """The page's ``data-images-loaded="N/M"`` after Chromium has rendered it from disk."""
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                        "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'data-images-loaded="([^"]*)"', p.stdout)
    assert m, p.stdout[:2000]
    return m.group(1)
