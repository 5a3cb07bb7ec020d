"""report.html in a real browser (headless Chromium): the header, the table of contents, and
every claim linking to a figure that decoded. Skipped where no Chromium is installed (CI
installs Debian's `chromium`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from report_dom import find_all, read

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(browser: str, page: Path, profile: Path) -> str:
    """The DOM of ``page`` after its load handler ran (headless, nothing fetched elsewhere)."""
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
        f"--user-data-dir={profile}",
        # Virtual time runs the page's load handler (the image check) before the DOM is dumped.
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_in_a_browser_header_contents_and_every_claim_links_to_a_loaded_figure(
    reported, tmp_path
):
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    out, config, written = reported
    dom = read(dump_dom(browser, out / "report.html", tmp_path / "browser-profile"))

    # The header: the paper, quick or full, the seeds.
    assert "On the Concurrence of Layer-wise Preconditioning" in dom.by_id["paper"].text
    assert "ICML 2025" in dom.by_id["paper"].text
    assert dom.by_id["variant"].attrs["data-variant"] == "full"
    assert dom.by_id["seeds"].text == f"{len(config.seeds)} seeds per experiment"
    check = dom.by_id["image-check"].attrs
    figures = sum(len(section.figures) for section in written.sections)
    assert (check["data-loaded"], check["data-total"]) == (str(figures), str(figures))

    # The table of contents: every link goes to an element of the page.
    contents = [a.attrs["href"] for a in find_all(dom.by_id["contents"], "a")]
    assert {"#claims", "#claim-details", "#experiments", "#experiment-toy"} <= set(contents)
    assert all(href[1:] in dom.by_id for href in contents)
    (table,) = find_all(dom.root, "table", "claims-table")
    rows = [
        (cells[0].text, cells[3].text)
        for row in find_all(table, "tr")
        if len(cells := find_all(row, "td")) == 5
    ]
    assert rows == [("T1", "holds"), ("T2", "does not hold"), ("T3", "undecided")]

    # Every claim links to a figure whose image the browser decoded.
    claims = find_all(dom.root, "article", "claim")
    assert [claim.attrs["data-claim"] for claim in claims] == ["T1", "T2", "T3"]
    for claim in claims:
        (link,) = find_all(claim, "a", "figure-link")
        target = dom.by_id[link.attrs["href"][1:]]
        assert target.tag == "figure", link.attrs["href"]
        (image,) = find_all(target, "img")
        assert int(image.attrs["data-natural-width"]) > 0, link.attrs["href"]
