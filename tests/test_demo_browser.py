"""The demo page in headless Chromium: upload a real CXR, get a report, nothing leaves localhost.

Uses Debian's ``chromium`` through Playwright's ``executable_path`` (``playwright install``
would download a browser). Without chromium the test skips locally and fails under ``CI``.
Run as a script to refresh the README screenshot:
``.venv/bin/python tests/test_demo_browser.py --out docs/demo.png`` (the shipped default model;
``--model DIR`` for another).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from demo_requirements import missing_modules, require

FIXTURE_IMAGE = Path(__file__).parent / "fixtures" / "00000001_000.png"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PAGE_TIMEOUT_MS = 45_000


def chromium_or_skip() -> str:
    """Path of the system chromium; skip without it (fail under CI, which must run this test)."""
    chromium = shutil.which("chromium")
    missing = missing_modules("gradio", "playwright")
    if chromium is None:
        missing.append("a chromium executable (apt-get install chromium)")
    require(missing)
    return chromium


def load_model(folder: Path | None, scratch: Path):
    """The model folder given, or the tiny test model written into ``scratch``."""
    from llmcxr.pipeline import LLMCXR

    if folder is None:
        from llm_fixtures import make_tiny_model_folder

        folder = scratch / "tiny-model"
        make_tiny_model_folder(folder)
    return LLMCXR.from_pretrained(folder, device="cpu")


def default_model_folder() -> Path:
    """The model folder `llmcxr` ships (what `llmcxr demo` serves without --model)."""
    from llmcxr.pipeline import default_model_path

    return default_model_path()


@contextmanager
def running_demo(model, output_dir: Path) -> Iterator[str]:
    """Serve the demo for ``model`` on a free localhost port; yields its URL."""
    from llmcxr.demo.app import build_demo, launch_demo

    demo = build_demo(model, output_dir)
    try:
        yield launch_demo(demo, host="127.0.0.1", block=False)
    finally:
        demo.close()


def drive_report_page(url: str, chromium: str, screenshot: Path) -> dict[str, object]:
    """Upload the fixture, ask for a report and an empty drawing; returns what the page showed.

    Every request to a host other than localhost is recorded and aborted, so the page must work
    with the network closed.
    """
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []

    def is_local(url: str) -> bool:
        return url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOCAL_HOSTS

    def only_local(route, request) -> None:
        if is_local(request.url):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    def record_outside(url: str) -> None:  # also catches what routing does not (websockets)
        if not is_local(url) and url not in outside:
            outside.append(url)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.route("**/*", only_local)
            page.on("request", lambda request: record_outside(request.url))
            page.on("websocket", lambda socket: record_outside(socket.url))
            page.goto(url)
            page.locator("#report-upload input[type=file]").set_input_files(str(FIXTURE_IMAGE))
            page.locator("#report-button").click()
            report_box = page.locator("#report-text textarea")
            expect(report_box).not_to_have_value("", timeout=PAGE_TIMEOUT_MS)
            report = report_box.input_value()
            highlighted = page.locator("#report-highlight").inner_text()
            page.screenshot(path=str(screenshot), full_page=True)

            page.get_by_role("tab", name="Draw").click()
            page.locator("#draw-button").click()
            error_toast = page.get_by_text("Type a report to draw an X-ray from.")
            expect(error_toast.first).to_be_visible()
            still_serving = page.request.get(url).ok
        finally:
            browser.close()
    return {
        "report": report,
        "highlighted": highlighted,
        "outside": outside,
        "still_serving": still_serving,
    }


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    model = load_model(None, tmp_path)
    screenshot = tmp_path / "demo.png"
    with running_demo(model, tmp_path / "generated") as url:
        seen = drive_report_page(url, chromium, screenshot)
    assert seen["report"].strip(), "the page showed an empty report"
    assert seen["highlighted"].strip(), "the highlighted report is empty"
    assert seen["outside"] == [], f"the page tried to reach the internet: {seen['outside']}"
    assert seen["still_serving"], "the app stopped serving after a failed request"
    assert screenshot.stat().st_size > 10_000


def main(argv: list[str] | None = None) -> int:
    """Refresh the README screenshot (``docs/demo.png``) from a real browser session."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: the shipped default model)"
    )
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        model = load_model(args.model or default_model_folder(), Path(scratch))
        with running_demo(model, Path(scratch) / "generated") as url:
            seen = drive_report_page(url, chromium, args.out)
    print(f"wrote {args.out}; report: {seen['report'][:80]!r}; outside requests: {seen['outside']}")
    return 0 if not seen["outside"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
