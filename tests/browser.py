"""Open rendered book pages in headless Chromium with the network off, as a reader would.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``)
driven through Selenium; nothing downloads a browser. Every page is loaded from ``file://`` with
the network emulated offline and a dead proxy, so a page that needs a CDN shows it.

Command line (screenshots of chosen pages, for looking at them)::

    python tests/browser.py _build/html [book/01_stability.html ...] --out _build/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 900)
MATHJAX_TIMEOUT_MS = 30_000

# Runs in the page: waits for MathJax's first typesetting, then reports what a reader would see.
_INSPECT = """
const done = arguments[arguments.length - 1];
const started = Date.now();
function report(mathjax) {
  const main = document.querySelector('main') || document.body;
  const text = main.innerText;
  const images = Array.from(document.images).filter(i => i.closest('main'));
  done({
    mathjax: mathjax,
    formulas: document.querySelectorAll('mjx-container').length,
    math_errors: Array.from(document.querySelectorAll('mjx-merror'))
        .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
    raw_math: (text.match(/\\\\\\(|\\\\\\[|\\$\\$/g) || []).length,
    broken_images: images.filter(i => !(i.complete && i.naturalWidth > 0))
        .map(i => i.getAttribute('src')),
    images: images.length,
    tracebacks: (text.match(/Traceback \\(most recent call last\\)/g) || []).length
        + document.querySelectorAll('.output.traceback, .cell_output .ansi-red-fg').length,
    nav: Array.from(document.querySelectorAll('nav.bd-links a.reference'))
        .map(a => a.getAttribute('href')),
    height: document.documentElement.scrollHeight,
  });
}
function wait() {
  if (!document.querySelector('script[src*="mathjax"]')) {
    report('absent');
  } else if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => report('typeset'), () => report('failed'));
  } else if (Date.now() - started > %d) {
    report(window.MathJax ? 'not started' : 'not loaded');
  } else {
    setTimeout(wait, 50);
  }
}
wait();
""" % MATHJAX_TIMEOUT_MS


@dataclass
class PageReport:
    """What a reader meets on one page."""

    page: str
    mathjax: str
    formulas: int
    math_errors: list[str]
    raw_math: int
    broken_images: list[str]
    images: int
    tracebacks: int
    nav: list[str] = field(repr=False)
    screenshot: Path | None = None

    def problems(self, *, needs_math: bool) -> list[str]:
        found = []
        if needs_math and self.mathjax != "typeset":
            found.append(f"MathJax {self.mathjax}")
        if self.raw_math:
            found.append(f"{self.raw_math} formulas left as TeX source")
        if self.math_errors:
            found.append(f"MathJax errors: {self.math_errors}")
        if self.broken_images:
            found.append(f"broken images: {self.broken_images}")
        if self.tracebacks:
            found.append(f"{self.tracebacks} tracebacks in outputs")
        return [f"{self.page}: {p}" for p in found]


def available() -> str | None:
    """None when Chromium, its driver and Selenium are installed, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e .[test])")
    return ", ".join(missing) or None


def open_browser():
    """A headless Chromium with no network: file:// pages only."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1", "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    driver.set_script_timeout(MATHJAX_TIMEOUT_MS / 1000 + 10)
    return driver


def inspect_page(driver, html_root: Path, page: str, screenshots: Path | None = None) -> PageReport:
    """Load ``html_root/page``, wait for MathJax, report; save a full-page screenshot."""
    driver.set_window_size(*WINDOW)
    driver.get((html_root / page).resolve().as_uri())
    result = driver.execute_async_script(_INSPECT)
    report = PageReport(page=page, **{k: v for k, v in result.items() if k != "height"})
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(WINDOW[0], min(int(result["height"]) + 50, 30_000))
        report.screenshot = screenshots / (page.replace("/", "__").removesuffix(".html") + ".png")
        driver.save_screenshot(str(report.screenshot))
    return report


def is_redirect(path: Path) -> bool:
    """Sphinx's index.html that only forwards to the root page."""
    return 'http-equiv="refresh"' in path.read_text(encoding="utf-8", errors="replace").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the rendered book, e.g. _build/html")
    parser.add_argument("pages", nargs="*", help="pages relative to it (default: all)")
    parser.add_argument("--out", type=Path, default=Path("_build/screenshots"))
    args = parser.parse_args()
    pages = args.pages or sorted(
        str(p.relative_to(args.html)) for p in args.html.rglob("*.html")
        if not p.relative_to(args.html).parts[0].startswith("_") and not is_redirect(p)
    )
    driver = open_browser()
    try:
        for page in pages:
            report = inspect_page(driver, args.html, page, args.out)
            problems = report.problems(needs_math=report.formulas > 0)
            print(f"{page}: {report.formulas} formulas, {report.images} images -> "
                  f"{report.screenshot}" + ("".join(f"\n  {p}" for p in problems)))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
