// The page's one WebSocket to /ws (API.md §4): channel subscriptions that resume where they left
// off (since_seq + epoch), the open conversation's chat-room subscription, a heartbeat, reconnection
// with capped exponential backoff, and de-duplication so that each event is handed on once.
//
// Positions: for each channel we keep `seq`, the highest sequence number up to which *every* event
// has been seen (a contiguous watermark), the log's `epoch`, and the set of seqs seen above the
// watermark. Events can reach us twice (the channel and the conversation subscription both match
// them, or a replay repeats one we had): anything at or below the watermark, or already in the set,
// is dropped. Resuming from the watermark can only repeat events, never skip one.
//
// Events dispatched (EventTarget):
//   "state"   {state: "connecting"|"online"|"offline", retryInMs?, reason?}
//   "event"   the envelope of one new event
//   "resync"  {channelId}: the server cannot replay (log trimmed or from another epoch): refetch
//   "fresh"   {channelId}: subscribed with no position to resume from: refetch to cover the gap
//   "failed"  the socket closed before it ever opened (bad token → 401 before the upgrade, or no server)

const PING_EVERY_MS = 20000;
// A socket that has said nothing for this long (no event, no pong) is treated as dead.
const SILENCE_LIMIT_MS = 50000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
// A gap in seqs that never fills (an event the server could not number) must not grow the set forever.
const MAX_SEEN_ABOVE_WATERMARK = 500;

export class LiveConnection extends EventTarget {
  constructor({ token, channelIds }) {
    super();
    this.token = token;
    this.channelIds = [...channelIds];
    this.positions = new Map();
    this.conversationId = null;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.heartbeat = null;
    this.stopped = true;
    this.pendingChannels = new Set();
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    this._connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    this._dropSocket();
  }

  reconnectNow() {
    if (this.stopped) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) return;
    clearTimeout(this.timer);
    this._dropSocket();
    this._connect();
  }

  // The open chat room: subscribe to it (and leave the previous one).
  setConversation(conversationId) {
    if (conversationId === this.conversationId) return;
    if (this.conversationId) this._send({ action: "unsubscribe", conversation_id: this.conversationId });
    this.conversationId = conversationId;
    if (conversationId) this._send({ action: "subscribe", conversation_id: conversationId });
  }

  // After a refetch the page is current as of now: resume from the server's latest position.
  adoptPosition(channelId, latestSeq, epoch) {
    this.positions.set(channelId, { seq: latestSeq, epoch, seen: new Set() });
  }

  _connect() {
    if (this.stopped) return;
    this._emit("state", { state: "connecting" });
    const url = new URL("/ws", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket: the query string is the one place the token
    // travels in a URL (the server never logs it). The page's own URL never holds it.
    url.searchParams.set("access_token", this.token);
    let ws;
    try {
      ws = new WebSocket(url.toString());
    } catch (err) {
      this._scheduleReconnect("cannot open a WebSocket", false);
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      opened = true;
      this.lastHeard = Date.now();
      this.pendingChannels = new Set(this.channelIds);
      for (const channelId of this.channelIds) this._subscribeChannel(channelId);
      if (this.conversationId) this._send({ action: "subscribe", conversation_id: this.conversationId });
      if (this.pendingChannels.size === 0) this._online();
      this._startHeartbeat();
    });
    ws.addEventListener("message", (e) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      this._onMessage(msg);
    });
    ws.addEventListener("close", (e) => {
      if (this.ws !== ws) return;
      this._dropSocket();
      const reason = e.code === 1001 ? "the server is restarting" : e.code === 1013 ? "the connection fell behind" : "the connection was lost";
      if (!opened) this._emit("failed", {});
      this._scheduleReconnect(reason, e.code === 1001);
    });
  }

  _subscribeChannel(channelId) {
    const command = { action: "subscribe", channel_id: channelId };
    const position = this.positions.get(channelId);
    if (position) {
      command.since_seq = position.seq;
      command.epoch = position.epoch;
    }
    this._send(command);
  }

  _onMessage(msg) {
    switch (msg.event) {
      case "subscribed":
        // The reply to a chat-room subscription names the conversation; only channel replies carry positions.
        if (msg.channel_id && !msg.conversation_id) this._subscribed(msg);
        return;
      case "pong":
      case "unsubscribed":
        return;
      case "error":
        console.warn("igsync /ws:", msg.error, msg.message);
        return;
      case "resync_required": {
        const data = msg.data || msg;
        const channelId = msg.channel_id;
        if (!channelId) return;
        this.adoptPosition(channelId, data.latest_seq, data.epoch);
        this._emit("resync", { channelId });
        return;
      }
      default:
        if (msg.channel_id && this._isNew(msg)) this._emit("event", msg);
    }
  }

  _subscribed(msg) {
    const channelId = msg.channel_id;
    if (!this.positions.has(channelId)) {
      // Nothing to resume from: what happened before now comes from REST.
      this.adoptPosition(channelId, msg.latest_seq, msg.epoch);
      this._emit("fresh", { channelId });
    }
    this.pendingChannels.delete(channelId);
    if (this.pendingChannels.size === 0) this._online();
  }

  _isNew(msg) {
    const position = this.positions.get(msg.channel_id);
    if (!position || typeof msg.seq !== "number") return true; // applying twice is harmless
    if (msg.seq <= position.seq || position.seen.has(msg.seq)) return false;
    position.seen.add(msg.seq);
    while (position.seen.has(position.seq + 1)) {
      position.seen.delete(position.seq + 1);
      position.seq += 1;
    }
    if (position.seen.size > MAX_SEEN_ABOVE_WATERMARK) {
      position.seq = Math.max(...position.seen);
      position.seen.clear();
    }
    return true;
  }

  _online() {
    this.attempt = 0;
    this._emit("state", { state: "online" });
  }

  _startHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
        // Half-open connection (sleeping laptop, dropped NAT entry): do not wait for TCP to notice.
        this._dropSocket();
        this._scheduleReconnect("the connection went silent", false);
        return;
      }
      this._send({ action: "ping" });
    }, PING_EVERY_MS);
  }

  _dropSocket() {
    clearInterval(this.heartbeat);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try {
        ws.close(1000, "bye");
      } catch (err) {
        /* already closing */
      }
    }
  }

  _scheduleReconnect(reason, soon) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.attempt += 1;
    // A restarting server (1001) is usually back at once; otherwise back off, with jitter so that
    // a thousand pages do not reconnect in the same millisecond.
    const base = soon && this.attempt === 1 ? 250 : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.attempt - 1));
    const delay = Math.round(base / 2 + (Math.random() * base) / 2);
    this._emit("state", { state: "offline", retryInMs: delay, reason });
    this.timer = setTimeout(() => this._connect(), delay);
  }

  _send(command) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(command));
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
