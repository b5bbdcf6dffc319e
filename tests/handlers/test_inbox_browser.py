"""The inbox page in headless Chromium (Debian's ``chromium``, driven by Playwright for Python).

Real parts only: a real igsync (in-process, or ``python -m server serve`` processes for the
restart test), real webhooks signed as Meta signs them, a real browser running the page's ES
modules. Waiting uses Playwright's ``expect``, which observes the DOM until the condition
holds (or fails after its timeout) — nothing sleeps for correctness.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from playwright.async_api import Browser, Page, async_playwright, expect

from config import Settings
from models.timeutil import from_epoch_ms
from server.app.embedded import EmbeddedStores, free_port
from server.inbox import events as ev
from tests.fakes.graph import GraphAnswer
from tests.support.browser import CHROMIUM, launch_chromium
from tests.support.events import events_env
from tests.support.helpers import (
    ADMIN_TOKEN,
    CUSTOMER_A,
    CUSTOMER_B,
    Client,
    ServerProcessHandle,
    body_of,
    echo_item,
    messaging_body,
    server_env,
    text_item,
)
from tests.support.server import RunningServer, Tenant, connect_tenant, make_settings

pytestmark = pytest.mark.browser

# Long enough for a server process to restart under the page and the page to reconnect.
expect.set_options(timeout=20_000)


@pytest.fixture
def chromium_path() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium package")
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await launch_chromium(playwright, chromium_path)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    await context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


T0_MS = int(time.time() * 1000) - 3_600_000


def at(n: int) -> int:
    """Distinct, increasing Instagram times, so order never depends on clocks within one ms."""
    return T0_MS + n * 1000


async def post(client: Client, *items: dict[str, Any]) -> dict[str, Any]:
    response = await client.webhook(messaging_body(*items))
    assert response.code == 200, response.body
    return body_of(response)


async def sign_in(page: Page, base_url: str, token: str) -> None:
    await page.goto(base_url + "/")
    await page.fill("#token-input", token)
    await page.press("#token-input", "Enter")
    await expect(page.locator("#app")).to_be_visible()


async def open_conversation(page: Page, conversation_id: str) -> None:
    button = page.locator(f'button.conversation[data-id="{conversation_id}"]')
    # The list is re-rendered when the socket's first sync lands (and on conversation events):
    # a click dispatched to a button at the moment it is replaced goes to a detached node and
    # is lost (seen once in CI: no message request followed the click). Click again then; the
    # conversation must still become the current one.
    for _ in range(3):
        await button.click()
        try:
            await expect(button).to_have_attribute("aria-current", "true", timeout=3000)
            return
        except AssertionError:
            continue
    await expect(button).to_have_attribute("aria-current", "true")


def texts(page: Page) -> Any:
    return page.locator("#messages .msg__text")


async def go_live(page: Page) -> None:
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "online")


async def open_live(page: Page, server: RunningServer, tenant: Tenant, *items: dict[str, Any]) -> dict[str, Any]:
    """Post the first messages of a conversation, sign in, open it, and wait until the page is live."""
    first = await post(server.client, *items)
    await sign_in(page, server.base_url, tenant.token)
    await open_conversation(page, (first.get("results") or [first])[0]["data"]["conversation"]["id"])
    await go_live(page)
    return first


# -- sign-in ---------------------------------------------------------------------------------


async def test_sign_in_lists_conversations_and_opens_history(page: Page, server: RunningServer, tenant: Tenant) -> None:
    first = await post(server.client, text_item("m-a1", "Hi! Do you ship to Lisbon?", timestamp_ms=at(1)))
    await post(server.client, echo_item("m-a2", "Yes, 3-5 days.", timestamp_ms=at(2)))
    conversation_id = first["data"]["conversation"]["id"]

    await sign_in(page, server.base_url, tenant.token)
    await expect(page.locator("button.conversation")).to_have_count(1)
    await open_conversation(page, conversation_id)

    await expect(texts(page)).to_have_text(["Hi! Do you ship to Lisbon?", "Yes, 3-5 days."])
    echo = page.locator('#messages .msg[data-source="instagram_direct"]')
    await expect(echo.locator(".source-badge")).to_have_text("Instagram app")
    await expect(page.locator("#messages .msg--in .source-badge")).to_have_count(0)
    # The token lives in this tab's sessionStorage only: never in the URL, never in localStorage.
    assert tenant.token not in page.url
    assert await page.evaluate("() => sessionStorage.getItem('igsync.inboxToken')") == tenant.token
    assert await page.evaluate("() => localStorage.length") == 0
    # A reload keeps the session and the open conversation.
    await page.reload()
    await expect(texts(page)).to_have_text(["Hi! Do you ship to Lisbon?", "Yes, 3-5 days."])


async def test_a_wrong_token_shows_a_clear_error(page: Page, server: RunningServer, tenant: Tenant) -> None:
    await page.goto(server.base_url + "/")
    await page.fill("#token-input", "igs_this-is-not-a-token")
    await page.click("#signin-button")
    error = page.locator("#signin-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("This token was not accepted")
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.locator("#token-input")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("() => sessionStorage.length") == 0

    await page.fill("#token-input", ADMIN_TOKEN)
    await page.click("#signin-button")
    await expect(error).to_contain_text("This is not an inbox token")
    assert ADMIN_TOKEN not in page.url


# -- live updates ------------------------------------------------------------------------------


async def test_a_webhook_appears_in_the_open_conversation_without_a_reload(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    await open_live(page, server, tenant, text_item("m-1", "Is the jacket in stock?", timestamp_ms=at(1)))
    await page.evaluate("() => { window.sameDocument = true; }")

    await post(server.client, text_item("m-2", "In size M please", timestamp_ms=at(2)))
    await post(server.client, text_item("m-3", "And in blue", timestamp_ms=at(3)))

    await expect(texts(page)).to_have_text(["Is the jacket in stock?", "In size M please", "And in blue"])
    assert await page.evaluate("() => window.sameDocument") is True
    # Read while open: the server's unread count is cleared, so the list shows no badge.
    await expect(page.locator(".unread-badge")).to_have_count(0)


async def test_an_owner_echo_shows_the_instagram_app_indicator(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    await open_live(page, server, tenant, text_item("m-1", "Do you have it in red?", timestamp_ms=at(1)))

    await post(server.client, echo_item("m-2", "Yes, red is in stock!", timestamp_ms=at(2)))

    reply = page.locator("#messages .msg--out", has_text="Yes, red is in stock!")
    await expect(reply).to_have_attribute("data-source", "instagram_direct")
    await expect(reply.locator(".source-badge")).to_have_text("Instagram app")
    await expect(reply.locator(".source-badge")).to_have_attribute("title", "Typed in the Instagram app")
    await expect(reply.locator(".ticks")).to_have_attribute("aria-label", "Sent")
    await expect(page.locator("#thread-subtitle")).to_contain_text("Answered")


async def test_a_second_conversation_jumps_to_the_top_with_an_unread_count(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    b = await post(server.client, text_item("m-b1", "Hello from B", sender=CUSTOMER_B, timestamp_ms=at(1)))
    a = await post(server.client, text_item("m-a1", "Hello from A", sender=CUSTOMER_A, timestamp_ms=at(2)))
    conv_a, conv_b = a["data"]["conversation"]["id"], b["data"]["conversation"]["id"]
    await sign_in(page, server.base_url, tenant.token)
    items = page.locator("#conversation-list > li")
    await expect(items).to_have_count(2)
    await expect(items.nth(0)).to_have_attribute("data-id", conv_a)
    await open_conversation(page, conv_a)
    await go_live(page)

    await post(server.client, text_item("m-b2", "Are you there?", sender=CUSTOMER_B, timestamp_ms=at(3)))

    await expect(items.nth(0)).to_have_attribute("data-id", conv_b)
    top = items.nth(0).locator("button.conversation")
    await expect(top.locator(".unread-badge")).to_have_text("2")
    await expect(top.locator(".conversation__preview")).to_have_text("Are you there?")
    await expect(top).to_have_attribute("aria-label", "Instagram user …0102, 2 unread, needs a reply")
    await expect(page).to_have_title("(2) igsync inbox")
    # The open conversation is still A, and B's message did not land in it.
    await expect(texts(page)).to_have_text(["Hello from A"])


async def test_a_row_that_did_not_change_keeps_its_node_when_the_list_is_redrawn(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    """A click in progress on a row (mousedown done) must not land on a node the redraw replaced."""
    a = await post(server.client, text_item("k-a1", "Hello from A", sender=CUSTOMER_A, timestamp_ms=at(1)))
    conv_a = a["data"]["conversation"]["id"]
    await sign_in(page, server.base_url, tenant.token)
    await go_live(page)
    row_a = page.locator(f'button.conversation[data-id="{conv_a}"]')
    await row_a.evaluate("button => { button.igsyncProbe = true; }")  # a property, not an attribute

    b = await post(server.client, text_item("k-b1", "Hello from B", sender=CUSTOMER_B, timestamp_ms=at(2)))
    items = page.locator("#conversation-list > li")
    await expect(items.nth(0)).to_have_attribute("data-id", b["data"]["conversation"]["id"])
    # A moved one place down, unchanged: the same node.
    assert await row_a.evaluate("button => button.igsyncProbe === true")

    await post(server.client, text_item("k-a2", "Still there?", sender=CUSTOMER_A, timestamp_ms=at(3)))
    await expect(row_a.locator(".conversation__preview")).to_have_text("Still there?")
    assert await row_a.evaluate("button => button.igsyncProbe === undefined")  # changed: drawn anew
    await expect(items).to_have_count(2)


async def test_customers_pictures_show_in_the_list_from_our_copy_or_instagrams_link(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    a = await post(server.client, text_item("m-a1", "Hello from A", sender=CUSTOMER_A, timestamp_ms=at(1)))
    b = await post(server.client, text_item("m-b1", "Hello from B", sender=CUSTOMER_B, timestamp_ms=at(2)))
    await sign_in(page, server.base_url, tenant.token)
    await go_live(page)
    rows = {
        name: page.locator(f'button.conversation[data-id="{answer["data"]["conversation"]["id"]}"]')
        for name, answer in (("a", a), ("b", b))
    }
    await expect(rows["a"].locator(".conversation__avatar")).to_have_text("I")  # no picture yet: the initial

    store, channel_id = server.core.store, ObjectId(tenant.channel["id"])

    async def profile(answer: dict[str, Any], fields: dict[str, Any]) -> None:
        # What the profile look-up stores and announces (server/graph/profiles.py).
        stored = await store.conversations.get(ObjectId(answer["data"]["conversation"]["id"]))
        assert stored is not None
        customer = await store.customers.update_profile(stored["customer_id"], fields)
        assert customer is not None
        conversation = await store.conversations.refresh_customer(channel_id, customer)
        assert conversation is not None
        await server.core.recorder.publish([ev.conversation_updated(conversation)])

    # A: our copy, fetched with the token. B: only a link, and a dead one: the initial stays.
    await profile(
        a, {"first_name": "Ada", "profile_pic": "https://cdn.invalid/a.jpg", "profile_pic_file": "/assets/icon.svg"}
    )
    await profile(b, {"first_name": "Bo", "profile_pic": "https://cdn.invalid/b.jpg"})
    picture = rows["a"].locator("img.conversation__picture")
    await expect(picture).to_have_attribute("src", re.compile(r"^blob:"))
    assert await picture.evaluate("(node) => node.complete && node.naturalWidth > 0")
    await expect(rows["b"].locator(".conversation__avatar")).to_have_text("B")
    await expect(rows["b"].locator("img.conversation__picture")).to_have_count(0)


async def test_opening_a_conversation_clears_its_unread_count_for_good(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    a = await post(server.client, text_item("m-a1", "One", timestamp_ms=at(1)))
    await post(server.client, text_item("m-a2", "Two", timestamp_ms=at(2)))
    await sign_in(page, server.base_url, tenant.token)
    badge = page.locator(".unread-badge")
    # Opened at once, while the first connection's snapshot refetch may still be in flight (the
    # merge rule that keeps an older snapshot from bringing the count back is pinned below).
    await open_conversation(page, a["data"]["conversation"]["id"])
    await go_live(page)
    await page.wait_for_load_state("networkidle")
    await expect(badge).to_have_count(0)
    await expect(page).to_have_title("igsync inbox")
    conversation = body_of(
        await server.client.get(f"/api/v1/conversations/{a['data']['conversation']['id']}", token=tenant.token)
    )
    assert conversation["conversation"]["unread_count"] == 0


async def test_updates_deletions_reactions_read_ticks_and_media_render_live(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    await open_live(
        page,
        server,
        tenant,
        text_item("m-1", "First version", timestamp_ms=at(1)),
        echo_item("m-2", "Our reply", timestamp_ms=at(2)),
        text_item("m-3", "Oops, wrong chat", timestamp_ms=at(3)),
    )
    await expect(texts(page)).to_have_count(3)
    store = server.core.store
    channel_id = ObjectId(tenant.channel["id"])

    async def change(mid: str, fields: dict[str, Any], changes: list[str]) -> dict[str, Any]:
        stored = await store.messages.find_by_mid(channel_id, mid)
        assert stored is not None
        updated = await store.messages.update(stored["_id"], {"$set": fields})
        assert updated is not None
        await server.core.recorder.publish([ev.message_updated(updated, changes)])
        return updated

    now = time.time()
    await change("m-1", {"content": "Second version", "edited_at": from_epoch_ms(now * 1000)}, ["content"])
    reaction = {"by": CUSTOMER_A, "reaction": "love", "emoji": "❤️", "at": from_epoch_ms(now * 1000)}
    await change("m-2", {"reactions": [reaction], "read_at": from_epoch_ms(now * 1000)}, ["reactions", "read_at"])
    deleted = await change("m-3", {"is_deleted": True}, ["is_deleted"])
    await server.core.recorder.publish([ev.message_deleted(deleted)])

    edited = page.locator("#messages .msg", has_text="Second version")
    await expect(edited.locator(".msg__edited")).to_have_text("edited")
    reply = page.locator("#messages .msg--out")
    await expect(reply.locator(".reaction")).to_have_text("❤️")
    await expect(reply.locator(".reaction")).to_have_attribute("aria-label", "❤️ by the customer")
    await expect(reply.locator(".ticks")).to_have_attribute("aria-label", "Seen")
    await expect(page.locator("#messages .msg--deleted .msg__text")).to_have_text("This message was deleted")
    await expect(page.locator("#messages .msg", has_text="Oops, wrong chat")).to_have_count(0)

    # Media: our stored copy is fetched with the Bearer header and shown as a blob: URL.
    image = await post(
        server.client,
        {
            "sender": {"id": CUSTOMER_A},
            "recipient": {"id": tenant.channel["page_id"]},
            "timestamp": at(4),
            "message": {"mid": "m-4", "attachments": [{"type": "image", "payload": {"url": "https://cdn.invalid/x"}}]},
        },
    )
    assert image["data"]["message"]["message_type"] == "image"
    await change("m-4", {"media_file": "/assets/icon.svg", "processing_status": "completed"}, ["media_file"])
    img = page.locator('#messages .msg[data-message-type="image"] img')
    await expect(img).to_have_attribute("src", re.compile(r"^blob:"))
    assert await img.evaluate("(node) => node.complete && node.naturalWidth > 0")

    # A story reply's story and an ad's creative: our copies too, once the worker made them.
    story_url, ad_url = "https://cdn.invalid/story", "https://cdn.invalid/ad"
    await post(
        server.client,
        {
            "sender": {"id": CUSTOMER_A},
            "recipient": {"id": tenant.channel["page_id"]},
            "timestamp": at(5),
            "message": {"mid": "m-5", "text": "Love this", "reply_to": {"story": {"url": story_url, "id": "s-1"}}},
        },
        {
            "sender": {"id": CUSTOMER_A},
            "recipient": {"id": tenant.channel["page_id"]},
            "timestamp": at(6),
            "message": {
                "mid": "m-6",
                "text": "Is the sale still on?",
                "referral": {
                    "ad_id": "ad-1",
                    "source": "ADS",
                    "ads_context_data": {"ad_title": "Sale", "photo_url": ad_url},
                },
            },
        },
    )
    copied = {"processing_status": "completed", "media_file": "/assets/icon.svg"}
    await change("m-5", {"reply_to": {"story": {"url": story_url, "id": "s-1", **copied}}}, ["reply_to"])
    referral = {"ad_id": "ad-1", "source": "ADS", "ads_context_data": {"ad_title": "Sale", "photo_url": ad_url}}
    await change("m-6", {"referral": {**referral, "media": {"photo": copied}}}, ["referral"])
    for label in ("Your story", "The ad"):
        copy = page.locator(f'#messages img[alt="{label}"]')
        await expect(copy).to_have_attribute("src", re.compile(r"^blob:"))
        assert await copy.evaluate("(node) => node.complete && node.naturalWidth > 0")


# -- reconnecting ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_page_reconnects_after_a_server_restart_and_shows_what_was_missed_once_in_order(
    page: Page, stores: EmbeddedStores, tmp_path: Path
) -> None:
    settings: Settings = make_settings(stores, tmp_path, port=free_port())
    env = server_env(settings)
    first_life = ServerProcessHandle(env, tmp_path / "serve-1.log").start()
    other = ServerProcessHandle(server_env(settings.replace(port=free_port())), tmp_path / "other.log").start()
    handles = [first_life, other]
    try:
        client = Client(first_life.base_url)
        tenant = await connect_tenant(client)
        opened = await post(client, text_item("m-0", "message 0", timestamp_ms=at(0)))
        client.close()
        await sign_in(page, first_life.base_url, tenant.token)
        await open_conversation(page, opened["data"]["conversation"]["id"])
        await go_live(page)

        assert first_life.terminate() == 0  # SIGTERM: the server closes the page's socket (1001)
        await expect(page.locator("#offline-banner")).to_be_visible()
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "offline")

        # Meanwhile Meta delivers to another process of the same installation.
        other_client = Client(other.base_url)
        for n in (1, 2, 3):
            await post(other_client, text_item(f"m-{n}", f"message {n}", timestamp_ms=at(n)))
        second_life = ServerProcessHandle(env, tmp_path / "serve-2.log").start()
        handles.append(second_life)
        for n in (4, 5):
            await post(other_client, text_item(f"m-{n}", f"message {n}", timestamp_ms=at(n)))
        other_client.close()

        await expect(texts(page)).to_have_text([f"message {n}" for n in range(6)])
        await expect(page.locator("#offline-banner")).to_be_hidden()
        await go_live(page)
        # And live again on the restarted server.
        client = Client(second_life.base_url)
        await post(client, text_item("m-6", "message 6", timestamp_ms=at(6)))
        client.close()
        await expect(texts(page)).to_have_text([f"message {n}" for n in range(7)])
    finally:
        for handle in handles:
            handle.kill()
    for handle in handles:
        assert tenant.token not in handle.output(), "the inbox token reached a log line"


# -- phone width and keyboard --------------------------------------------------------------------


async def test_phone_width_and_keyboard_only_use(browser: Browser, server: RunningServer, tenant: Tenant) -> None:
    b = await post(server.client, text_item("m-b1", "From B", sender=CUSTOMER_B, timestamp_ms=at(1)))
    a = await post(server.client, text_item("m-a1", "From A", sender=CUSTOMER_A, timestamp_ms=at(2)))
    context = await browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    phone = await context.new_page()
    try:
        await phone.goto(server.base_url + "/")
        await expect(phone.locator("#token-input")).to_be_focused()
        await phone.keyboard.type(tenant.token)
        await phone.keyboard.press("Enter")
        await expect(phone.locator("#conversation-list > li")).to_have_count(2)
        await expect(phone.locator("#thread")).to_be_hidden()  # one pane at a time

        first = phone.locator("button.conversation").nth(0)
        await first.focus()
        await phone.keyboard.press("ArrowDown")
        second = phone.locator(f'button.conversation[data-id="{b["data"]["conversation"]["id"]}"]')
        await expect(second).to_be_focused()
        await phone.keyboard.press("ArrowUp")
        await expect(first).to_be_focused()
        await phone.keyboard.press("Enter")

        await expect(phone.locator("#thread")).to_be_visible()
        await expect(phone.locator("#sidebar")).to_be_hidden()
        await expect(phone.locator("#thread")).to_be_focused()
        await expect(texts(phone)).to_have_text(["From A"])
        assert await phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")

        await phone.keyboard.press("Escape")
        await expect(phone.locator("#sidebar")).to_be_visible()
        await expect(phone.locator(f'button.conversation[data-id="{a["data"]["conversation"]["id"]}"]')).to_be_focused()
    finally:
        await context.close()


# -- the page's own logic, run in the browser --------------------------------------------------


async def test_snapshots_and_events_merge_idempotently_and_never_go_back_in_time(
    page: Page, server: RunningServer
) -> None:
    await page.goto(server.base_url + "/assets/icon.svg")
    result = await page.evaluate(
        """async () => {
          const { InboxState } = await import("/assets/js/state.js");
          const s = new InboxState();
          const at = (n) => `2026-01-01T00:00:0${n}.000Z`;
          s.replaceConversations([{ id: "a", updated_at: at(1), unread_count: 2 }], null);
          s.upsertConversation({ id: "a", updated_at: at(3), unread_count: 0 });          // mark-read answer
          s.replaceConversations([{ id: "a", updated_at: at(2), unread_count: 2 }], null); // older snapshot
          s.upsertConversation({ id: "a", updated_at: at(2), unread_count: 5 });          // older event
          const unread = s.conversations.get("a").unread_count;
          s.open("a");
          const m = (id, sent, content) => ({ id, conversation_id: "a", sent_at: at(sent), content });
          const arrivals = [m("m3", 3, "three"), m("m1", 1, "one"), m("m2", 2, "two"), m("m1", 1, "one")];
          for (const msg of arrivals) s.upsertMessage(msg);
          s.upsertMessage({ ...m("x", 1, "elsewhere"), conversation_id: "b" });
          s.markDeleted("m2");
          return { unread, order: s.sortedMessages().map((x) => x.content), deleted: s.messages.get("m2").is_deleted };
        }"""
    )
    assert result == {"unread": 0, "order": ["one", "", "three"], "deleted": True}


async def test_live_events_are_handed_on_once_and_resume_from_the_contiguous_watermark(
    page: Page, server: RunningServer
) -> None:
    await page.goto(server.base_url + "/assets/icon.svg")
    result = await page.evaluate(
        """async () => {
          const { LiveConnection } = await import("/assets/js/live.js");
          const live = new LiveConnection({ token: "t", channelIds: ["c"] });
          const seen = [];
          live.addEventListener("event", (e) => seen.push(e.detail.seq));
          const sent = [];
          live.ws = { readyState: WebSocket.OPEN, send: (frame) => sent.push(JSON.parse(frame)) };
          live._onMessage({ event: "subscribed", channel_id: "c", latest_seq: 10, epoch: "e1" });
          // 12 arrives before 11 (through the chat-room subscription); 11 and 12 then arrive again.
          const event = (seq) => ({ event: "chat_message", channel_id: "c", seq, data: {} });
          for (const seq of [12, 11, 11, 12, 13, 9]) live._onMessage(event(seq));
          const afterLive = live.positions.get("c").seq;
          live._onMessage(event(15));  // 14 still missing
          live._subscribeChannel("c");
          live._onMessage({ event: "resync_required", channel_id: "c", data: { latest_seq: 40, epoch: "e2" } });
          return { seen, afterLive, resume: sent.at(-1), afterResync: live.positions.get("c") };
        }"""
    )
    assert result["seen"] == [12, 11, 13, 15]
    assert result["afterLive"] == 13
    # Resuming from the watermark (13, not 15) can only repeat events, never skip 14.
    assert result["resume"] == {"action": "subscribe", "channel_id": "c", "since_seq": 13, "epoch": "e1"}
    assert result["afterResync"]["seq"] == 40
    assert result["afterResync"]["epoch"] == "e2"


# -- the composer (sending through igsync) ------------------------------------------------------


async def test_the_composer_sends_shows_pending_sent_failed_retry_and_the_window(
    page: Page, stores: EmbeddedStores, tmp_path: Path
) -> None:
    """Enter sends; the reply shows at once as pending, then sent; a refused one shows Meta's
    reason and a Retry button; the composer says when only a person may reply, or nobody."""
    settings = dict(send_retry_base_secs=0.05, send_poll_secs=0.1, send_lease_secs=3.0)
    async with events_env(stores, tmp_path, realtime=True, **settings) as env:
        first = await post(env.client, text_item("m-c1", "Is the blue one back?", timestamp_ms=int(time.time() * 1000)))
        conversation_id = first["data"]["conversation"]["id"]
        late = await post(env.client, text_item("m-c2", "hello?", sender=CUSTOMER_B, timestamp_ms=at(1)))
        closed = await post(env.client, text_item("m-c3", "anyone?", sender="6200000000000777", timestamp_ms=at(2)))
        conversations = env.core.store.conversations.coll
        for posted, ago in ((late, timedelta(hours=30)), (closed, timedelta(days=8))):
            when = datetime.now(UTC) - ago
            oid = ObjectId(posted["data"]["conversation"]["id"])
            await conversations.update_one({"_id": oid}, {"$set": {"last_customer_message_at": when}})

        gate = asyncio.Event()
        env.graph.send_answers.append(GraphAnswer(gate=gate))  # Instagram answers when the test says
        await sign_in(page, env.server.base_url, env.token)
        await open_conversation(page, conversation_id)
        await go_live(page)
        await expect(page.locator("#composer-window")).to_have_text("")
        await page.fill("#composer-input", "Yes! Back since Monday.")
        await page.press("#composer-input", "Enter")
        reply = page.locator("#messages .msg--out", has_text="Yes! Back since Monday.")
        await expect(reply.locator(".ticks--pending")).to_be_visible()
        await expect(page.locator("#composer-input")).to_have_value("")
        gate.set()
        await expect(reply.locator(".ticks")).to_have_attribute("aria-label", "Sent")
        assert [c["body"]["message"]["text"] for c in env.graph.sends] == ["Yes! Back since Monday."]

        env.graph.send_error(551, message="This person isn't available right now.")
        await page.fill("#composer-input", "Still there?")
        await page.click("#composer-send")
        failed = page.locator("#messages .msg--out", has_text="Still there?")
        await expect(failed.locator(".msg__failed")).to_contain_text("This person isn't available right now.")
        await failed.locator("button.msg__retry").click()
        await expect(failed.locator(".ticks")).to_have_attribute("aria-label", "Sent")
        await expect(failed.locator(".msg__failed")).to_have_count(0)

        await open_conversation(page, late["data"]["conversation"]["id"])
        await expect(page.locator("#composer-window")).to_contain_text("human agent")
        await expect(page.locator("#composer-input")).to_be_enabled()
        await open_conversation(page, closed["data"]["conversation"]["id"])
        await expect(page.locator("#composer-window")).to_contain_text("allows no reply")
        await expect(page.locator("#composer-input")).to_be_disabled()
        await expect(page.locator("#composer-send")).to_be_disabled()


async def test_a_refused_token_shows_a_reconnect_banner_live_and_a_reconnect_clears_it(
    page: Page, server: RunningServer, tenant: Tenant
) -> None:
    await open_live(page, server, tenant, text_item("m-r1", "Hello?", timestamp_ms=at(1)))
    banner = page.locator("#reauth-banner")
    await expect(banner).to_be_hidden()

    # Instagram refuses the channel's token (a send, a look-up or a refresh saw code 190).
    channel = await server.core.store.channels.get(ObjectId(tenant.channel["id"]))
    assert await server.core.accounts.health.token_rejected(channel, by="send")
    await expect(banner).to_be_visible()
    await expect(page.locator("#reauth-text")).to_contain_text(f"@{tenant.channel['username']}")

    # The administrator reconnects it with a new token: the banner goes, without a reload.
    await page.evaluate("() => { window.sameDocument = true; }")
    payload = {
        "page_id": tenant.channel["page_id"],
        "username": tenant.channel["username"],
        "owner": tenant.owner,
        "access_token": "IGQVJ-a-new-token-from-the-admin",
    }
    response = await server.client.post("/api/v1/channels", payload, token=ADMIN_TOKEN)
    assert response.code == 200, response.body
    await expect(banner).to_be_hidden()
    assert await page.evaluate("() => window.sameDocument") is True
