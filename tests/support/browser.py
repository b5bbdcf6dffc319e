"""Headless Chromium for the inbox page: Debian's ``/usr/bin/chromium`` driven by Playwright.

Never ``playwright install``: the browser comes from the ``chromium`` Debian package
(``make system-deps``), so nothing is downloaded at test time.
"""

from __future__ import annotations

from playwright.async_api import Browser, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def launch_chromium(playwright: Playwright, executable: str = CHROMIUM) -> Browser:
    return await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
