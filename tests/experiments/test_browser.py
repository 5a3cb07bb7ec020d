"""report.html in a real browser (headless Chromium): every figure decodes, the claims table
is there. Skipped where no Chromium is installed (CI installs Debian's `chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_html_loads_every_figure_and_shows_the_claims_table(reported, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    out, _, written = reported
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'browser-profile'}",
        # Virtual time runs the page's load handler (the image check) before the DOM is dumped.
        "--virtual-time-budget=10000",
        "--dump-dom",
        (out / "report.html").as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]

    check = re.search(r'<span id="image-check" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert check is not None, "the page's image check did not run:\n" + dom[:2000]
    loaded, total = map(int, check.groups())
    figures = sum(len(section.figures) for section in written.sections)
    assert (loaded, total) == (figures, figures) and figures == 2

    table = re.search(r'<table id="claims">(.*?)</table>', dom, re.S)
    assert table is not None
    rows = re.findall(r'<tr class="(\w+)"><td>(T\d)</td>', table.group(1))
    assert rows == [("holds", "T1"), ("fails", "T2"), ("undecided", "T3")]
