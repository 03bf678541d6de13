"""The web client in a real headless Chromium (Debian's), driven by Playwright.

`scripts/services` installs the browser (`apt-get install chromium`); Playwright's
own browser download is not used. The node runs in-process with its HTTP port.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from clusterchat.config import Settings
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH

CHROMIUM = "/usr/bin/chromium"
#: Waits for the page: generous, the machine may be busy.
expect.set_options(timeout=15_000)


def web_settings(tmp_path: Path, **kw: object) -> Settings:
    # No shedding: the node shares its event loop with Playwright's driver,
    # whose work made the loop 0.8 s late on a busy machine, and a page whose
    # script was refused (ERROR 160) never showed its form.
    kw.setdefault("shed_lag", 0.0)
    return Settings(
        port=0,
        http_port=0,
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'web.db'}",
        hash_cost=FAST_HASH,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def web_node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(web_settings(tmp_path))
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


NewPage = Callable[..., Awaitable[Page]]


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[NewPage]:
    """Pages in separate contexts (each its own sessionStorage: one user each).
    A dialog (alert) fails the test: nothing a user sends may run script."""
    dialogs: list[str] = []

    async def _new(port: int, width: int = 1100, height: int = 720) -> Page:
        ctx = await browser.new_context(viewport={"width": width, "height": height})
        page = await ctx.new_page()
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(f"http://127.0.0.1:{port}/")
        return page

    yield _new
    assert dialogs == [], f"a page opened dialogs: {dialogs}"


async def register(page: Page, name: str, password: str = "pw") -> int:
    """Register through the form; the client logs in by itself. Returns the user id."""
    await page.click("#tab-register")
    await page.fill("#reg-name", name)
    await page.fill("#password", password)
    await page.click("#auth-submit")
    await expect(page.locator("#me-id")).to_have_text(re.compile(r"user id \d+"))
    text = await page.locator("#me-id").text_content()
    assert text is not None
    return int(text.rsplit(" ", 1)[1])


async def log_in(page: Page, uid: int, password: str = "pw") -> None:
    await page.fill("#login-id", str(uid))
    await page.fill("#password", password)
    await page.click("#auth-submit")
    await expect(page.locator("#me-id")).to_have_text(f"user id {uid}")


async def add_friend(page: Page, uid: int) -> None:
    await page.click("#add-friend-btn")
    await page.fill("#friend-id", str(uid))
    await page.press("#friend-id", "Enter")
    await expect(page.locator(f'[data-key="u:{uid}"]')).to_be_visible()


async def say(page: Page, text: str) -> None:
    """Type into the open conversation and press Enter."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")
