"""Regenerate the README's screenshot of the inbox page: ``python scripts/inbox_screenshot.py docs/inbox.png``.

Starts throwaway embedded stores and an in-process igsync, connects the sample account, posts
a few signed webhooks (two customers, an owner reply typed in the Instagram app, a story reply),
gives one message a reaction and a read receipt through the same event path the server uses,
stores drawn pictures as the customers' profile pictures and the replied story (what the
profile look-up and the media worker would have copied), signs in to the page in headless
Chromium and saves a PNG.
"""

from __future__ import annotations

import asyncio
import io
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from bson import ObjectId  # noqa: E402
from playwright.async_api import async_playwright, expect  # noqa: E402

from models.timeutil import from_epoch_ms, utcnow  # noqa: E402
from server.app.embedded import EmbeddedStores  # noqa: E402
from server.inbox import events as ev  # noqa: E402
from tests.support.browser import launch_chromium  # noqa: E402
from tests.support.helpers import CUSTOMER_A, CUSTOMER_B, echo_item, messaging_body, text_item  # noqa: E402
from tests.support.server import connect_tenant, make_settings, start_server, stop_server  # noqa: E402

PEOPLE = {CUSTOMER_A: ("Ana", "Silva", "ana.silva"), CUSTOMER_B: ("Tom", "Becker", "tombecker")}
# Colours of the drawn pictures: (top, bottom) of a vertical gradient.
PICTURES = {CUSTOMER_A: ((247, 166, 107), (214, 41, 118)), CUSTOMER_B: ((110, 190, 235), (40, 90, 170))}
STORY_COLOURS = ((250, 240, 225), (200, 170, 140))


def gradient_png(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """A PNG of a vertical gradient, written by hand (no imaging library in the project)."""
    width, height = size
    rows = b""
    for y in range(height):
        t = y / max(height - 1, 1)
        pixel = bytes(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        rows += b"\x00" + pixel * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def stage(stores: EmbeddedStores, data_dir: Path, out: Path) -> None:
    server = await start_server(make_settings(stores, data_dir))
    try:
        tenant = await connect_tenant(server.client, username="demo_shop")
        start = int(time.time() * 1000) - 5 * 60_000

        async def post(*items: dict) -> dict:
            response = await server.client.webhook(messaging_body(*items))
            assert response.code == 200, response.body
            return orjson.loads(response.body)

        await post(text_item("s-b1", "Hi! Is the linen shirt back in stock?", sender=CUSTOMER_B, timestamp_ms=start))
        a1 = await post(text_item("s-a1", "Hi! Do you ship to Lisbon?", timestamp_ms=start + 60_000))
        await post(echo_item("s-a2", "Hello Ana! Yes — Portugal takes 3-5 days.", timestamp_ms=start + 120_000))
        await post(text_item("s-a3", "Great, and is the jacket available in M?", timestamp_ms=start + 180_000))
        story_reply = text_item("s-a4", "I saw the white one in your story 😍", timestamp_ms=start + 200_000)
        story_reply["message"]["reply_to"] = {"story": {"id": "1809", "url": "https://cdn.invalid/story.jpg"}}
        await post(story_reply)
        store = server.core.store
        channel_id = ObjectId(tenant.channel["id"])

        async def picture(png: bytes, **metadata: object) -> str:
            file_id = await store.media_files.upload(
                "picture.png", io.BytesIO(png), {"content_type": "image/png", "channel_id": channel_id, **metadata}
            )
            return f"/media/{file_id}"

        for instagram_id, (first, last, username) in PEOPLE.items():
            customer, _ = await store.customers.get_or_create(channel_id, instagram_id)
            profile = {"first_name": first, "last_name": last, "username": username, "enhanced_data_fetched": True}
            profile["profile_pic_file"] = await picture(gradient_png((96, 96), *PICTURES[instagram_id]))
            updated = await store.customers.update_profile(customer["_id"], profile)
            assert updated is not None
            await store.conversations.refresh_customer(channel_id, updated)
        story = await store.messages.find_by_mid(channel_id, "s-a4")
        assert story is not None
        story_copy = await picture(gradient_png((90, 160), *STORY_COLOURS), message_id=story["_id"])
        await store.messages.update(
            story["_id"],
            {"$set": {"reply_to.story.media_file": story_copy, "reply_to.story.processing_status": "completed"}},
        )
        reply = await store.messages.find_by_mid(channel_id, "s-a2")
        assert reply is not None
        now = from_epoch_ms(time.time() * 1000)
        reaction = {"by": CUSTOMER_A, "reaction": "love", "emoji": "❤️", "at": now}
        reply = await store.messages.update(reply["_id"], {"$set": {"reactions": [reaction], "read_at": utcnow()}})
        assert reply is not None
        await server.core.recorder.publish([ev.message_updated(reply, ["reactions", "read_at"])])

        async with async_playwright() as playwright:
            browser = await launch_chromium(playwright)
            page = await browser.new_page(viewport={"width": 1100, "height": 640}, color_scheme="light")
            await page.goto(server.base_url + "/")
            await page.fill("#token-input", tenant.token)
            await page.press("#token-input", "Enter")
            conversation = a1["data"]["conversation"]["id"]
            await page.click(f'button.conversation[data-id="{conversation}"]')
            await expect(page.locator("#messages .msg")).to_have_count(4)
            await expect(page.locator("#live-status")).to_have_attribute("data-state", "online", timeout=10_000)
            # One new message from the other customer while the page is open: it jumps to the top, unread.
            await post(text_item("s-b2", "Also, do you have it in white?", sender=CUSTOMER_B))
            badge = page.locator(".conversation-item").nth(0).locator(".unread-badge")
            await expect(badge).to_have_text("2", timeout=10_000)
            await expect(page.locator(".unread-badge")).to_have_count(1)
            await page.screenshot(path=str(out))
            await browser.close()
    finally:
        await stop_server(server)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/inbox.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stores = EmbeddedStores(Path(tmp) / "stores", lock=False).start()
        try:
            asyncio.run(stage(stores, Path(tmp), out))
        finally:
            stores.stop()
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
