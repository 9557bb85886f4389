"""Headless Debian Chromium driven by Playwright against the test server, with every
request that is not for 127.0.0.1 aborted, and the page's errors collected."""
import contextlib
import os
import shutil
import tempfile
from urllib.parse import urlparse

CHROMIUM = os.environ.get("AE_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
LOOPBACK = {"127.0.0.1", "localhost"}


class Page:
    """A Playwright page plus what it did that a test must see."""

    def __init__(self, page, out_dir: str):
        self.page, self.out_dir = page, out_dir
        self.errors, self.blocked = [], []
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and self.errors.append(
            f"console error: {message.text}"))

    def screenshot(self, name: str, clip: dict | None = None) -> str:
        path = os.path.join(self.out_dir, f"{name}.png")
        self.page.screenshot(path=path, clip=clip)
        return path


@contextlib.contextmanager
def browser_page(out_dir: str, width: int = 1800, height: int = 1100):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
                           "or point AE_CHROMIUM at a Chromium binary")
    from playwright.sync_api import sync_playwright
    os.makedirs(out_dir, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="ae-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": width, "height": height})
            try:
                page = Page(context.pages[0] if context.pages else context.new_page(), out_dir)

                def keep_local(route):
                    if urlparse(route.request.url).hostname in LOOPBACK or route.request.url.startswith("data:"):
                        route.continue_()
                    else:
                        page.blocked.append(route.request.url)
                        route.abort()

                context.route("**/*", keep_local)
                # A frontend banner that would cover the top of every screenshot.
                context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
