// The inbox page: sign-in, the conversation list, the open conversation, and live updates.
//
// Data flow: REST gives snapshots (the list, a conversation's history); /ws gives events after a
// position. Whenever the page cannot resume from a position (first connection, or the server says
// `resync_required`) it refetches the snapshots, holding back live events that arrive meanwhile
// and applying them afterwards. Every merge is idempotent (see state.js), so overlaps between a
// snapshot and events never show a message twice.

import { Api, ApiError } from "./api.js";
import { LiveConnection } from "./live.js";
import { InboxState } from "./state.js";
import { MediaLoader, customerName, renderConversation, renderMessage } from "./view.js";

const TOKEN_KEY = "igsync.inboxToken";
const OPEN_KEY = "igsync.openConversation";
const NEAR_BOTTOM_PX = 120;
const $ = (id) => document.getElementById(id);

class InboxPage {
  constructor(api, channels) {
    this.api = api;
    this.state = new InboxState();
    this.state.setChannels(channels);
    this.media = new MediaLoader(api);
    // Customers' pictures: kept for the page's life (rows are rebuilt on every change; each
    // picture is fetched once), unlike a thread's media, released when the thread closes.
    this.avatars = new MediaLoader(api);
    this.messageNodes = new Map();
    this.conversationNodes = new Map();
    this.buffer = null;
    this.syncAgain = false;
    this.renderQueued = { list: false, thread: false };
    this.readTimer = null;
    this.live = new LiveConnection({ token: api.token, channelIds: channels.map((c) => c.id) });
  }

  async start() {
    this.bindUi();
    this.showChannels();
    $("signin").hidden = true;
    $("app").hidden = false;
    this.live.addEventListener("state", (e) => this.showConnection(e.detail));
    this.live.addEventListener("event", (e) => this.onEvent(e.detail));
    this.live.addEventListener("fresh", () => this.sync());
    this.live.addEventListener("resync", () => this.sync());
    this.live.addEventListener("failed", () => this.checkToken());
    await this.loadConversations();
    const remembered = sessionStorage.getItem(OPEN_KEY);
    if (remembered && this.state.conversations.has(remembered)) this.openConversation(remembered, false);
    this.live.start();
  }

  stop() {
    this.live.stop();
    this.media.clear();
    this.avatars.clear();
    clearInterval(this.countdown);
  }

  // -- snapshots ---------------------------------------------------------------------------

  async loadConversations() {
    try {
      const page = await this.api.conversations();
      this.state.replaceConversations(page.conversations, page.next_cursor);
    } catch (err) {
      this.handleApiError(err);
    }
    this.queueRender({ list: true });
  }

  // Refetch what the page shows, holding back live events until the snapshot is in.
  async sync() {
    if (this.buffer) {
      this.syncAgain = true;
      return;
    }
    this.buffer = [];
    try {
      const page = await this.api.conversations();
      this.state.replaceConversations(page.conversations, page.next_cursor);
      const openId = this.state.openId;
      if (openId) {
        const history = await this.api.messages(openId);
        if (this.state.openId === openId) {
          this.state.messages = new Map();
          for (const m of history.messages) this.state.upsertMessage(m);
          this.state.hasEarlier = history.has_more;
        }
      }
    } catch (err) {
      this.handleApiError(err);
    } finally {
      const held = this.buffer;
      this.buffer = null;
      for (const envelope of held) this.apply(envelope);
      this.queueRender({ list: true, thread: true });
      if (this.syncAgain) {
        this.syncAgain = false;
        this.sync();
      }
    }
  }

  // -- live events -------------------------------------------------------------------------

  onEvent(envelope) {
    if (this.buffer) this.buffer.push(envelope);
    else this.apply(envelope);
  }

  apply(envelope) {
    const data = envelope.data || {};
    const state = this.state;
    switch (envelope.event) {
      case "chat_message":
        if (data.message && state.upsertMessage(data.message)) this.queueRender({ thread: true });
        break;
      case "new_customer_message":
      case "owner_message_notification":
        if (data.conversation && state.upsertConversation(data.conversation)) this.queueRender({ list: true });
        if (data.message && state.upsertMessage(data.message)) this.queueRender({ thread: true });
        break;
      case "conversation_updated":
        if (data.conversation && state.upsertConversation(data.conversation)) {
          this.queueRender({ list: true, thread: data.conversation.id === state.openId });
          if (data.conversation.id === state.openId && data.conversation.unread_count > 0) this.markReadSoon();
        }
        break;
      case "message_updated":
        if (data.message && state.messages.has(data.message.id) && state.upsertMessage(data.message)) this.queueRender({ thread: true });
        break;
      case "message_deleted":
        if (state.markDeleted(data.message_id)) this.queueRender({ thread: true });
        break;
      case "channel_updated":
        // Instagram refused the account's token (needs_reauth), or it was reconnected.
        if (data.channel && state.channels.has(data.channel.id)) {
          state.channels.set(data.channel.id, data.channel);
          this.showChannels();
        }
        break;
      case "history_import":
        this.showHistory(data.history_import || {});
        break;
      default:
        break;
    }
  }

  // The open conversation is being read: clear its unread count on the server (coalesced).
  markReadSoon() {
    if (document.visibilityState !== "visible") return;
    clearTimeout(this.readTimer);
    const id = this.state.openId;
    this.readTimer = setTimeout(async () => {
      try {
        const body = await this.api.markRead(id);
        if (this.state.upsertConversation(body.conversation)) this.queueRender({ list: true });
      } catch (err) {
        this.handleApiError(err);
      }
    }, 300);
  }

  // -- conversations -----------------------------------------------------------------------

  async openConversation(id, focusThread) {
    const state = this.state;
    state.open(id);
    sessionStorage.setItem(OPEN_KEY, id);
    this.media.clear();
    this.messageNodes = new Map();
    $("messages").replaceChildren();
    document.body.classList.add("thread-open");
    this.live.setConversation(id);
    this.renderThreadHeader();
    this.queueRender({ list: true });
    if (focusThread) $("thread").focus();
    try {
      const history = await this.api.messages(id);
      if (state.openId !== id) return;
      for (const m of history.messages) state.upsertMessage(m);
      state.hasEarlier = history.has_more;
    } catch (err) {
      this.handleApiError(err);
    }
    this.renderThread(true);
    const conversation = state.conversations.get(id);
    if (conversation && conversation.unread_count > 0) this.markReadSoon();
  }

  closeConversation() {
    document.body.classList.remove("thread-open");
    const active = this.state.openId && this.conversationNodes.get(this.state.openId);
    if (active) active.querySelector("button").focus();
  }

  async loadEarlier() {
    const id = this.state.openId;
    const before = this.state.oldestMessageId();
    if (!id || !before) return;
    const body = $("thread-body");
    const fromBottom = body.scrollHeight - body.scrollTop;
    try {
      const page = await this.api.messages(id, { before });
      if (this.state.openId !== id) return;
      for (const m of page.messages) this.state.upsertMessage(m);
      this.state.hasEarlier = page.has_more;
    } catch (err) {
      this.handleApiError(err);
    }
    this.renderThread(false);
    body.scrollTop = body.scrollHeight - fromBottom;
  }

  async loadMoreConversations() {
    if (!this.state.nextCursor) return;
    try {
      const page = await this.api.conversations({ cursor: this.state.nextCursor });
      for (const c of page.conversations) this.state.upsertConversation(c);
      this.state.nextCursor = page.next_cursor;
    } catch (err) {
      this.handleApiError(err);
    }
    this.queueRender({ list: true });
  }

  // -- rendering ---------------------------------------------------------------------------

  // Batch DOM work per task; not requestAnimationFrame, which stops in background tabs and would
  // leave the title's unread count stale.
  queueRender(parts) {
    const pending = this.renderQueued;
    const idle = !pending.list && !pending.thread;
    pending.list = pending.list || !!parts.list;
    pending.thread = pending.thread || !!parts.thread;
    if (!idle) return;
    setTimeout(() => {
      const { list, thread } = this.renderQueued;
      this.renderQueued = { list: false, thread: false };
      if (list) this.renderList();
      if (thread) this.renderThread(false);
    }, 0);
  }

  renderList() {
    const list = $("conversation-list");
    const sorted = this.state.sortedConversations();
    const several = this.state.channels.size > 1;
    const focusedId = document.activeElement && document.activeElement.closest && document.activeElement.closest(".conversation-item")?.dataset.id;
    const nodes = new Map();
    const shown = new Map([...list.children].map((li) => [li.dataset.id, li]));
    sorted.forEach((conversation, index) => {
      const channel = this.state.channels.get(conversation.channel_id);
      const fresh = renderConversation(conversation, {
        active: conversation.id === this.state.openId,
        channelLabel: several && channel ? `@${channel.username}` : null,
        avatars: this.avatars,
      });
      // A row that did not change keeps its node (moved, if the order changed): a click in
      // progress on it — mousedown done, mouseup to come — would be lost on a replaced node.
      const kept = shown.get(conversation.id);
      let node = fresh;
      if (kept && kept.isEqualNode(fresh)) node = kept;
      else if (kept) kept.remove();
      nodes.set(conversation.id, node);
      const current = list.children[index];
      if (current !== node) list.insertBefore(node, current || null);
    });
    // The first rows are now the sorted ones; what follows left the list.
    while (list.children.length > sorted.length) list.lastElementChild.remove();
    this.conversationNodes = nodes;
    if (focusedId && nodes.has(focusedId)) nodes.get(focusedId).querySelector("button").focus({ preventScroll: true });
    $("list-empty").hidden = sorted.length > 0;
    $("load-more-conversations").hidden = !this.state.nextCursor;
    const unread = this.state.totalUnread();
    document.title = unread ? `(${unread}) igsync inbox` : "igsync inbox";
    if (this.state.openId) this.renderThreadHeader();
  }

  // -- the composer ------------------------------------------------------------------------

  // Meta's window (API.md §2b): a normal reply for 24 h after the customer's last message, a
  // person's (HUMAN_AGENT) reply for 7 days, then none until the customer writes again.
  renderComposer() {
    const conversation = this.state.conversations.get(this.state.openId);
    const form = $("composer");
    form.hidden = !conversation;
    if (!conversation) return;
    const replyWindow = conversation.reply_window || {};
    const now = new Date().toISOString();
    let note = "";
    let closed = false;
    if (!replyWindow.human_agent_until || now >= replyWindow.human_agent_until) {
      closed = true;
      note = "The customer has not written in the last 7 days: Instagram allows no reply until they write again.";
    } else if (now >= replyWindow.standard_until) {
      note = "More than 24 hours since the customer wrote: your reply goes as a human agent's (allowed for 7 days).";
    }
    $("composer-window").textContent = note;
    $("composer-window").dataset.state = closed ? "closed" : note ? "human_agent" : "open";
    $("composer-input").disabled = closed;
    $("composer-send").disabled = closed;
  }

  async sendReply() {
    const input = $("composer-input");
    const content = input.value.trim();
    const conversationId = this.state.openId;
    if (!content || !conversationId) return;
    const error = $("composer-error");
    error.hidden = true;
    // One id per reply: a retried request (a flaky network) is the same send, never a second one.
    const clientMessageId = `inbox-${crypto.randomUUID()}`;
    input.value = "";
    try {
      const body = await this.api.send(conversationId, content, clientMessageId);
      if (this.state.openId === conversationId && this.state.upsertMessage(body.message)) this.renderThread(true);
    } catch (err) {
      input.value = content;
      error.textContent = err.message;
      error.hidden = false;
      this.handleApiError(err);
    }
  }

  async retrySend(messageId) {
    try {
      const body = await this.api.retrySend(messageId);
      if (this.state.upsertMessage(body.message)) this.queueRender({ thread: true });
    } catch (err) {
      this.handleApiError(err);
    }
  }

  renderThreadHeader() {
    const conversation = this.state.conversations.get(this.state.openId);
    const customer = conversation && conversation.customer;
    $("thread-title").textContent = conversation ? customerName(customer) : "Conversation";
    const bits = [];
    if (customer && customer.username) bits.push(`@${customer.username}`);
    if (conversation) bits.push(conversation.status === "needs_reply" ? "Needs a reply" : "Answered");
    $("thread-subtitle").textContent = bits.join(" · ");
    this.renderComposer();
  }

  renderThread(forceBottom) {
    const list = $("messages");
    const body = $("thread-body");
    const nearBottom = body.scrollHeight - body.scrollTop - body.clientHeight < NEAR_BOTTOM_PX;
    const conversation = this.state.conversations.get(this.state.openId);
    const context = {
      customerInstagramId: conversation && conversation.customer && conversation.customer.instagram_id,
      findByMid: (mid) => this.state.findByMid(mid),
      media: this.media,
    };
    const sorted = this.state.sortedMessages();
    const nodes = new Map();
    sorted.forEach((message, index) => {
      const known = this.messageNodes.get(message.id);
      const node = known && known.message === message ? known.node : renderMessage(message, context);
      nodes.set(message.id, { node, message });
      if (known && known.node !== node) known.node.replaceWith(node);
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    for (const [id, known] of this.messageNodes) if (!nodes.has(id)) known.node.remove();
    this.messageNodes = nodes;
    $("thread-empty").hidden = !!this.state.openId;
    $("load-earlier").hidden = !this.state.hasEarlier;
    if (forceBottom || nearBottom) body.scrollTop = body.scrollHeight;
  }

  showChannels() {
    const channels = [...this.state.channels.values()];
    const names = channels.map((c) => `@${c.username}`).join(", ");
    $("channel-names").textContent = names ? `· ${names}` : "· no channel connected";
    const refused = channels.filter((c) => c.needs_reauth).map((c) => `@${c.username}`);
    $("reauth-banner").hidden = refused.length === 0;
    $("reauth-text").textContent = refused.length
      ? `Instagram no longer accepts the access of ${refused.join(", ")}: reconnect the account. ` +
        "Messages still arrive; replies wait until then."
      : "";
  }

  // A history import (or a repair after an outage) of a channel: its progress, then the list again.
  showHistory(progress) {
    const status = $("history-status");
    const done = progress.conversations ? progress.conversations.done : 0;
    const total = progress.conversations ? progress.conversations.total : 0;
    if (progress.state === "running" || progress.state === "queued") {
      status.hidden = false;
      status.textContent = `Importing history… ${done}/${total} conversations`;
      return;
    }
    status.hidden = true;
    if (progress.state === "done") this.sync();
  }

  showConnection({ state, retryInMs, reason }) {
    const status = $("live-status");
    status.dataset.state = state;
    status.textContent = state === "online" ? "Live" : state === "connecting" ? "Connecting…" : "Offline";
    clearInterval(this.countdown);
    if (state === "online") {
      $("offline-banner").hidden = true;
      return;
    }
    if (state !== "offline") return;
    const until = Date.now() + (retryInMs || 0);
    const show = () => {
      const secs = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      $("offline-text").textContent = navigator.onLine
        ? `Offline — ${reason || "the connection was lost"}. Reconnecting${secs ? ` in ${secs} s` : ""}…`
        : "You are offline (no network). The inbox reconnects when the network is back.";
    };
    show();
    this.countdown = setInterval(show, 1000);
    $("offline-banner").hidden = false;
  }

  // -- errors and auth ---------------------------------------------------------------------

  handleApiError(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your inbox token is no longer accepted. Sign in again with a valid token.");
      return;
    }
    console.warn("igsync:", err.message);
  }

  // The socket closed before opening: a revoked token (401 before the upgrade) or no server.
  async checkToken() {
    try {
      const body = await this.api.channels();
      const ids = body.channels.map((c) => c.id);
      if (ids.join() !== this.live.channelIds.join()) {
        this.state.setChannels(body.channels);
        this.live.channelIds = ids;
        this.showChannels();
      }
    } catch (err) {
      if (err.status === 401) this.handleApiError(err);
    }
  }

  // -- keyboard and buttons ----------------------------------------------------------------

  bindUi() {
    this.listeners = new AbortController();
    const signal = this.listeners.signal;
    const list = $("conversation-list");
    list.addEventListener(
      "click",
      (e) => {
        const button = e.target.closest("button.conversation");
        if (button) this.openConversation(button.dataset.id, true);
      },
      { signal },
    );
    list.addEventListener(
      "keydown",
      (e) => {
        const buttons = [...list.querySelectorAll("button.conversation")];
        const index = buttons.indexOf(document.activeElement);
        const target = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: buttons.length - 1 }[e.key];
        if (target === undefined || !buttons.length) return;
        e.preventDefault();
        buttons[Math.max(0, Math.min(buttons.length - 1, target))].focus();
      },
      { signal },
    );
    $("thread").addEventListener("keydown", (e) => e.key === "Escape" && this.closeConversation(), { signal });
    $("back").addEventListener("click", () => this.closeConversation(), { signal });
    $("load-earlier").addEventListener("click", () => this.loadEarlier(), { signal });
    $("load-more-conversations").addEventListener("click", () => this.loadMoreConversations(), { signal });
    $("reconnect-now").addEventListener("click", () => this.live.reconnectNow(), { signal });
    $("composer").addEventListener(
      "submit",
      (e) => {
        e.preventDefault();
        this.sendReply();
      },
      { signal },
    );
    $("composer-input").addEventListener(
      "keydown",
      (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.sendReply();
        }
      },
      { signal },
    );
    $("messages").addEventListener(
      "click",
      (e) => {
        const retry = e.target.closest("button.msg__retry");
        if (retry) this.retrySend(retry.dataset.id);
      },
      { signal },
    );
    document.addEventListener(
      "visibilitychange",
      () => {
        const open = this.state.conversations.get(this.state.openId);
        if (open && open.unread_count > 0) this.markReadSoon();
      },
      { signal },
    );
  }

  unbindUi() {
    if (this.listeners) this.listeners.abort();
  }
}

// -- sign-in --------------------------------------------------------------------------------

let page = null;

function showSignIn(message) {
  $("app").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  const input = $("token-input");
  input.setAttribute("aria-invalid", message ? "true" : "false");
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(OPEN_KEY);
  if (page) {
    page.stop();
    page.unbindUi();
    page = null;
  }
  $("conversation-list").replaceChildren();
  $("messages").replaceChildren();
  document.body.classList.remove("thread-open");
  document.title = "igsync inbox";
  showSignIn(message);
}

function signInMessage(err) {
  if (!(err instanceof ApiError)) return "Signing in failed. Try again.";
  if (err.status === 401) return "This token was not accepted. Paste the whole inbox token (it starts with igs_) — it may have been revoked or mistyped.";
  if (err.status === 403) return "This is not an inbox token. Admin and internal tokens cannot read the inbox; create one with igsync token create.";
  if (err.status === 0) return "The server cannot be reached. Check that igsync is running and try again.";
  return `Signing in failed: ${err.message}`;
}

async function signIn(token, { remembered }) {
  const api = new Api(token);
  let body;
  try {
    body = await api.channels();
  } catch (err) {
    if (remembered && err.status !== 401 && err.status !== 403) {
      // A remembered token and a server that is down right now: keep the token, show the page offline.
      body = { channels: [] };
    } else {
      if (remembered) sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(remembered ? "Your saved token is no longer accepted. Sign in again." : signInMessage(err));
      return;
    }
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  page = new InboxPage(api, body.channels);
  await page.start();
}

function boot() {
  // A token must never sit in this page's URL (history, bookmarks, Referer): drop one if pasted there.
  const url = new URL(window.location.href);
  if (url.search || url.hash) {
    for (const name of ["token", "access_token"]) url.searchParams.delete(name);
    url.hash = "";
    window.history.replaceState(null, "", url.pathname + url.search);
  }
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) {
      showSignIn("Paste your inbox token first.");
      return;
    }
    const button = $("signin-button");
    button.disabled = true;
    try {
      await signIn(token, { remembered: false });
    } finally {
      button.disabled = false;
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved, { remembered: true });
  else showSignIn("");
}

boot();
