// What the page knows: channels, conversations, and the open conversation's messages.
//
// Every change is an idempotent merge, so REST snapshots and live events can arrive in any order
// and any number of times and still leave one copy of each thing:
// - a conversation is replaced only by a copy at least as recent (`updated_at`);
// - a message is keyed by id (a redelivered event, or REST history overlapping live events,
//   replaces it instead of adding a second one); messages are ordered by Instagram's time
//   (`sent_at`), then id — the order of REST history.

function activity(conversation) {
  return (conversation.last_message && conversation.last_message.created_at) || conversation.updated_at || "";
}

// Newest activity first. Sorting by the last message rather than `updated_at` keeps a conversation
// in place when it is only marked read or its customer's profile is refreshed.
export function compareConversations(a, b) {
  const byActivity = activity(b).localeCompare(activity(a));
  if (byActivity !== 0) return byActivity;
  return (b.updated_at || "").localeCompare(a.updated_at || "") || b.id.localeCompare(a.id);
}

export function compareMessages(a, b) {
  return (a.sent_at || a.created_at || "").localeCompare(b.sent_at || b.created_at || "") || a.id.localeCompare(b.id);
}

export class InboxState {
  constructor() {
    this.channels = new Map();
    this.conversations = new Map();
    this.nextCursor = null;
    this.openId = null;
    this.messages = new Map();
    this.hasEarlier = false;
  }

  setChannels(channels) {
    this.channels = new Map(channels.map((c) => [c.id, c]));
  }

  upsertConversation(conversation) {
    const known = this.conversations.get(conversation.id);
    if (known && (known.updated_at || "") > (conversation.updated_at || "")) return false;
    this.conversations.set(conversation.id, conversation);
    return true;
  }

  // A fresh first page replaces the list (what was beyond it is paged in again on demand). A
  // conversation we already hold in a newer state (a mark-read answer or an event that overtook
  // this snapshot's read) keeps that state: a snapshot never moves a conversation back in time.
  replaceConversations(conversations, nextCursor) {
    const known = this.conversations;
    this.conversations = new Map();
    for (const c of conversations) {
      const mine = known.get(c.id);
      this.conversations.set(c.id, mine && (mine.updated_at || "") > (c.updated_at || "") ? mine : c);
    }
    this.nextCursor = nextCursor;
  }

  sortedConversations() {
    return [...this.conversations.values()].sort(compareConversations);
  }

  totalUnread() {
    let total = 0;
    for (const c of this.conversations.values()) total += c.unread_count || 0;
    return total;
  }

  open(conversationId) {
    this.openId = conversationId;
    this.messages = new Map();
    this.hasEarlier = false;
  }

  upsertMessage(message) {
    if (message.conversation_id !== this.openId) return false;
    this.messages.set(message.id, message);
    return true;
  }

  markDeleted(messageId) {
    const message = this.messages.get(messageId);
    if (!message) return null;
    const deleted = { ...message, is_deleted: true, content: "" };
    this.messages.set(messageId, deleted);
    return deleted;
  }

  sortedMessages() {
    return [...this.messages.values()].sort(compareMessages);
  }

  oldestMessageId() {
    const sorted = this.sortedMessages();
    return sorted.length ? sorted[0].id : null;
  }

  findByMid(mid) {
    for (const m of this.messages.values()) if (m.mid === mid) return m;
    return null;
  }
}
