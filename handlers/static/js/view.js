// Rendering: conversations and messages to DOM nodes. Text is only ever set with textContent and
// URLs are checked to be http(s) or same-origin paths, so nothing a customer sends can run here.

const DAY_MS = 24 * 3600 * 1000;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || ["role", "title", "datetime", "href", "type", "id", "tabindex", "target", "rel", "alt", "download"].includes(key)) node.setAttribute(key, value === true ? "" : String(value));
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// Only web links and our own paths: never javascript:, data: or anything else from a payload.
export function safeUrl(url) {
  if (typeof url !== "string" || !url) return null;
  if (url.startsWith("/") && !url.startsWith("//")) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.toString() : null;
  } catch (err) {
    return null;
  }
}

export function customerName(customer) {
  if (!customer) return "Unknown customer";
  const full = [customer.first_name, customer.last_name].filter(Boolean).join(" ");
  if (full) return full;
  if (customer.username) return `@${customer.username}`;
  const id = customer.instagram_id || "";
  return id ? `Instagram user …${id.slice(-4)}` : "Instagram user";
}

export function formatTime(iso, now = new Date()) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (now - date < DAY_MS && now.getDate() === date.getDate()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })}, ${time}`;
}

function fullTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

const MESSAGE_TYPE_PREVIEW = {
  image: "Photo",
  audio: "Voice message",
  video: "Video",
  file: "File",
  share: "Shared a post",
  ig_post: "Shared a post",
  ig_reel: "Shared a reel",
  story_mention: "Mentioned you in their story",
  story_reply: "Replied to your story",
  unsupported: "A message Instagram cannot show here",
  referral: "Came from an ad or link",
};

export function preview(lastMessage) {
  if (!lastMessage) return "No messages yet";
  const prefix = lastMessage.type && lastMessage.type !== "customer" ? "You: " : "";
  const text = lastMessage.content || MESSAGE_TYPE_PREVIEW[lastMessage.message_type] || "";
  return prefix + (text || "Message");
}

// One conversation row: a real <button> (focusable, Enter/Space open it) inside a list item.
export function renderConversation(conversation, { active, channelLabel, avatars }) {
  const unread = conversation.unread_count || 0;
  const name = customerName(conversation.customer);
  const avatar = el("span", { class: "conversation__avatar", "aria-hidden": "true", text: name.replace(/^@/, "").slice(0, 1).toUpperCase() });
  const customer = conversation.customer || {};
  if (avatars && (customer.profile_pic_file || customer.profile_pic)) {
    // Over the initial, which shows again if neither our copy nor Instagram's link loads.
    const picture = el("img", { class: "conversation__picture", alt: "" });
    avatar.append(picture);
    avatars.attach(picture, customer.profile_pic_file, customer.profile_pic, () => picture.remove());
  }
  const button = el(
    "button",
    {
      type: "button",
      class: "conversation",
      "data-id": conversation.id,
      "aria-current": active ? "true" : null,
      "aria-label": `${name}${unread ? `, ${unread} unread` : ""}${conversation.status === "needs_reply" ? ", needs a reply" : ""}`,
    },
    avatar,
    el(
      "span",
      { class: "conversation__main" },
      el(
        "span",
        { class: "conversation__top" },
        el("span", { class: "conversation__name", text: name }),
        el("time", { class: "conversation__time", datetime: conversation.updated_at, text: formatTime((conversation.last_message && conversation.last_message.created_at) || conversation.updated_at) }),
      ),
      el(
        "span",
        { class: "conversation__bottom" },
        el("span", { class: "conversation__preview", text: preview(conversation.last_message) }),
        unread ? el("span", { class: "unread-badge", "aria-hidden": "true", text: unread > 99 ? "99+" : String(unread) }) : null,
      ),
      channelLabel ? el("span", { class: "conversation__channel", text: channelLabel }) : null,
    ),
  );
  if (conversation.status === "needs_reply") button.classList.add("conversation--needs-reply");
  if (unread) button.classList.add("conversation--unread");
  return el("li", { class: "conversation-item", "data-id": conversation.id }, button);
}

// Who wrote an outbound message: typed in the Instagram app, sent through the app's API, or by AI.
export function sourceLabel(message) {
  if (message.type === "customer") return null;
  if (message.source === "instagram_direct") return { key: "instagram_direct", text: "Instagram app", title: "Typed in the Instagram app" };
  if (message.source === "ai" || message.type === "AI" || message.is_ai_response) return { key: "ai", text: "AI", title: "Sent by the AI assistant" };
  return { key: "app", text: "App", title: "Sent from the app" };
}

// Media: our stored copy (`media_file`, fetched with the token) or Instagram's link (`media_url`).
export class MediaLoader {
  constructor(api) {
    this.api = api;
    this.blobs = new Map();
  }

  attach(node, ownPath, cdnUrl, onFail) {
    const own = safeUrl(ownPath);
    const cdn = safeUrl(cdnUrl);
    const fallback = () => {
      if (cdn && node.getAttribute("src") !== cdn) node.src = cdn;
      else if (onFail) onFail();
    };
    node.addEventListener("error", () => (node.getAttribute("src") === cdn || !cdn ? onFail && onFail() : fallback()));
    if (!own) {
      fallback();
      return;
    }
    if (!this.blobs.has(own)) this.blobs.set(own, this.api.mediaBlobUrl(own));
    this.blobs
      .get(own)
      .then((blobUrl) => {
        node.src = blobUrl;
      })
      .catch(() => {
        this.blobs.delete(own);
        fallback();
      });
  }

  clear() {
    for (const promise of this.blobs.values()) promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
    this.blobs = new Map();
  }
}

function mediaElement(kind, message, url, media, label) {
  const wrap = el("div", { class: `media media--${kind}` });
  const unavailable = () => {
    wrap.replaceChildren(
      safeUrl(url) ? el("a", { href: safeUrl(url), target: "_blank", rel: "noopener noreferrer", text: `Open ${label.toLowerCase()} on Instagram` }) : el("span", { class: "media__missing", text: `${label} unavailable (Instagram's link may have expired)` }),
    );
  };
  let node;
  if (kind === "image") node = el("img", { alt: label, loading: "lazy" });
  else if (kind === "video") node = el("video", { controls: true, preload: "metadata", "aria-label": label });
  else node = el("audio", { controls: true, preload: "metadata", "aria-label": label });
  wrap.append(node);
  media.attach(node, message.media_file, url, unavailable);
  return wrap;
}

function fileLink(message, media) {
  const link = el("a", { class: "media media--file", target: "_blank", rel: "noopener noreferrer", text: "📎 Open the file" });
  const own = safeUrl(message.media_file);
  const cdn = safeUrl(message.media_url);
  if (own) {
    link.href = "#";
    link.addEventListener("click", async (e) => {
      e.preventDefault();
      const url = await media.api.mediaBlobUrl(own).catch(() => cdn);
      if (url) window.open(url, "_blank", "noopener,noreferrer");
    });
  } else if (cdn) link.href = cdn;
  else return el("span", { class: "media__missing", text: "File unavailable" });
  return link;
}

function shareCard(message) {
  const att = (message.attachments || []).find((a) => ["ig_post", "ig_reel", "share", "reel"].includes(a.type)) || {};
  const what = message.message_type === "ig_reel" ? "Shared a reel" : "Shared a post";
  const url = safeUrl(att.url || message.media_url);
  return el(
    "div",
    { class: "share-card" },
    el("span", { class: "share-card__label", text: what }),
    att.title ? el("span", { class: "share-card__title", text: att.title }) : null,
    url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "Open on Instagram" }) : null,
  );
}

function storyContext(message, media) {
  const story = message.reply_to && message.reply_to.story;
  if (message.message_type === "story_mention") {
    const url = message.media_url || ((message.attachments || [])[0] || {}).url;
    return el("div", { class: "story" }, el("p", { class: "msg__context", text: "Mentioned you in their story" }), mediaElement("image", message, url, media, "Story"));
  }
  if (story) {
    // The story's own copy (`reply_to.story.media_file`): stories vanish after 24 hours.
    const storyMessage = { media_file: story.media_file };
    return el("div", { class: "story" }, el("p", { class: "msg__context", text: "Replied to your story" }), mediaElement("image", storyMessage, story.url, media, "Your story"));
  }
  return null;
}

function replyQuote(message, findByMid) {
  const target = message.reply_to && message.reply_to.mid;
  if (!target) return null;
  const quoted = findByMid(target);
  const text = quoted ? (quoted.is_deleted ? "A deleted message" : quoted.content || MESSAGE_TYPE_PREVIEW[quoted.message_type] || "A message") : "An earlier message";
  return el("blockquote", { class: "msg__quote" }, el("span", { class: "visually-hidden", text: "In reply to: " }), text);
}

// The ad a conversation came from: its creative, our copy first (`referral.media.photo`).
function adCreative(ref, media) {
  const link = (ref.ads_context_data || {}).photo_url;
  const copy = (ref.media || {}).photo || {};
  if (!link && !copy.media_file) return null;
  return mediaElement("image", { media_file: copy.media_file }, link, media, "The ad");
}

function extraContext(message, media) {
  if (message.message_type === "postback" && message.postback) return el("p", { class: "msg__context", text: `Tapped a button${message.postback.title ? `: ${message.postback.title}` : ""}` });
  if (message.message_type === "quick_reply") return el("p", { class: "msg__context", text: "Quick reply" });
  if (message.referral) {
    const ref = message.referral;
    const ad = ref.ads_context_data && ref.ads_context_data.ad_title;
    const what = ref.source === "ADS" || ref.ad_id ? `From an ad${ad ? `: ${ad}` : ""}` : `From a link${ref.ref ? ` (${ref.ref})` : ""}`;
    const context = el("p", { class: "msg__context", text: what });
    const creative = adCreative(ref, media);
    return creative ? el("div", { class: "ad" }, context, creative) : context;
  }
  return null;
}

function reactionList(message, customerInstagramId) {
  const reactions = message.reactions || [];
  if (!reactions.length) return null;
  return el(
    "ul",
    { class: "msg__reactions", "aria-label": "Reactions" },
    ...reactions.map((r) => {
      const who = r.by && r.by === customerInstagramId ? "the customer" : "you";
      return el("li", { class: "reaction", title: `${r.reaction || "reaction"} by ${who}`, "aria-label": `${r.emoji || r.reaction} by ${who}`, text: r.emoji || "❤️" });
    }),
  );
}

// An outbound message's state: sending (stored, Instagram not yet), not delivered, sent, seen.
function deliveryMark(message) {
  if (message.delivery_status === "pending") {
    return el("span", { class: "ticks ticks--pending", title: "Sending to Instagram…", "aria-label": "Sending", text: "…" });
  }
  if (message.delivery_status === "failed") {
    return el("span", { class: "ticks ticks--failed", title: "Not delivered", "aria-label": "Not delivered", text: "!" });
  }
  return message.read_at
    ? el("span", { class: "ticks ticks--read", title: `Seen ${fullTime(message.read_at)}`, "aria-label": "Seen", text: "✓✓" })
    : el("span", { class: "ticks", title: "Sent", "aria-label": "Sent", text: "✓" });
}

function deliveryFailure(message) {
  const reason = (message.delivery_error && message.delivery_error.message) || "Instagram did not accept it.";
  return el(
    "p",
    { class: "msg__failed", role: "status" },
    el("span", { text: `Not delivered: ${reason} ` }),
    el("button", { type: "button", class: "link-button msg__retry", "data-id": message.id, text: "Retry" }),
  );
}

export function renderMessage(message, { customerInstagramId, findByMid, media }) {
  const inbound = message.type === "customer";
  const source = sourceLabel(message);
  const bubble = el("div", { class: "msg__bubble" });
  const item = el(
    "li",
    {
      class: `msg ${inbound ? "msg--in" : "msg--out"}${message.is_deleted ? " msg--deleted" : ""}`,
      "data-id": message.id,
      "data-mid": message.mid,
      "data-type": message.type,
      "data-message-type": message.message_type,
      "data-source": message.source,
    },
    el("span", { class: "visually-hidden", text: inbound ? "Customer: " : source.key === "instagram_direct" ? "You, from the Instagram app: " : source.key === "ai" ? "AI: " : "You: " }),
    bubble,
  );
  if (message.is_deleted) {
    bubble.append(el("p", { class: "msg__text msg__text--deleted", text: "This message was deleted" }));
  } else {
    bubble.append(...[storyContext(message, media), extraContext(message, media), replyQuote(message, findByMid)].filter(Boolean));
    const kind = message.message_type;
    if (kind === "image" || kind === "video" || kind === "audio") {
      bubble.append(mediaElement(kind, message, message.media_url, media, { image: "Photo", video: "Video", audio: "Voice message" }[kind]));
      if (message.processing_status === "pending") bubble.append(el("p", { class: "msg__note", text: "Saving a copy…" }));
    } else if (kind === "file") {
      bubble.append(fileLink(message, media));
    } else if (kind === "share" || kind === "ig_post" || kind === "ig_reel") {
      bubble.append(shareCard(message));
    } else if (kind === "unsupported") {
      bubble.append(el("p", { class: "msg__note", text: "This message type cannot be shown here; open it in Instagram." }));
    }
    if (message.content) bubble.append(el("p", { class: "msg__text", text: message.content }));
    if (message.transcription) bubble.append(el("p", { class: "msg__transcription", text: `“${message.transcription}”` }));
  }
  item.append(reactionList(message, customerInstagramId) || "");
  const meta = el("p", { class: "msg__meta" }, el("time", { datetime: message.sent_at || message.created_at, title: fullTime(message.sent_at || message.created_at), text: formatTime(message.sent_at || message.created_at) }));
  if (source) meta.append(el("span", { class: `source-badge source-badge--${source.key}`, title: source.title, text: source.text }));
  if (message.edited_at && !message.is_deleted) meta.append(el("span", { class: "msg__edited", title: `Edited ${fullTime(message.edited_at)}`, text: "edited" }));
  if (!inbound) meta.append(deliveryMark(message));
  item.append(meta);
  if (message.delivery_status === "failed") item.append(deliveryFailure(message));
  return item;
}
