"""Open a report in a real browser (Debian's headless Chromium driven by Playwright) and say what a reader would
see: did every image load, did the console stay clean, did anything try to run or fetch, is the verdict visible.
Used by the browser test and to take the README's screenshot:

    python -m reports.browser OUT/report.html --screenshot report.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_path() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).is_file():
            return name
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_unavailable() -> str | None:
    """Why the check cannot run here (None when it can)."""
    if chromium_path() is None:
        return "no Chromium on this machine (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@dataclass
class PageCheck:
    images: list[dict] = field(default_factory=list)  # src (first 40 chars), naturalWidth, naturalHeight
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # anything fetched besides the page and data: URIs
    verdict_visible: bool = False
    verdict_text: str = ""
    body_text: str = ""  # what a reader sees (innerText: closed <details> excluded)
    text_content: str = ""  # every text node of the page (textContent), e.g. file names in collapsed lists

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["naturalWidth"]]


def check_page(html: Path, screenshot: Path | None = None, verdict_selector: str = "#verdict-word",
               width: int = 1200, height: int = 900) -> PageCheck:
    from playwright.sync_api import sync_playwright

    html = Path(html).resolve()
    url = html.as_uri()
    result = PageCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))

            def on_dialog(dialog):
                result.dialogs.append(f"{dialog.type}: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("request", lambda r: result.requests.append(r.url)
                    if r.url != url and not r.url.startswith("data:") else None)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            result.images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.getAttribute('src').slice(0, 40), "
                       "naturalWidth: e.naturalWidth, naturalHeight: e.naturalHeight, complete: e.complete}))")
            verdict = page.locator(verdict_selector)
            if verdict.count():
                result.verdict_visible = verdict.first.is_visible()
                result.verdict_text = verdict.first.inner_text().strip()
            result.body_text = page.inner_text("body")
            result.text_content = page.evaluate("document.body.textContent")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check a synth-audit HTML report in headless Chromium")
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    why = browser_unavailable()
    if why:
        print(f"cannot check: {why}")
        return 2
    check = check_page(args.html, args.screenshot, width=args.width, height=args.height)
    summary = {k: v for k, v in asdict(check).items() if k not in ("body_text", "text_content")}
    print(json.dumps(summary, indent=2))
    ok = not (check.broken_images or check.console_errors or check.page_errors or check.dialogs or check.requests)
    return 0 if ok and check.verdict_visible else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
