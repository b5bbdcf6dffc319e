// REST client of API.md §3: every call carries the inbox token as a Bearer header (never in a URL).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body = undefined) {
    let response;
    const headers = { Authorization: `Bearer ${this.token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "network_error", "The server cannot be reached.");
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (err) {
      answer = null;
    }
    if (!response.ok) {
      const code = (answer && answer.error) || "http_error";
      const message = (answer && answer.message) || `The server answered ${response.status}.`;
      throw new ApiError(response.status, code, message);
    }
    return answer;
  }

  channels() {
    return this.request("GET", "/api/v1/channels");
  }

  conversations({ cursor = null, limit = 50 } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return this.request("GET", `/api/v1/conversations?${query}`);
  }

  messages(conversationId, { before = null, limit = 50 } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set("before", before);
    return this.request("GET", `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages?${query}`);
  }

  // Sending through igsync (API.md §2b): 202 with the message stored as pending; a retry of the
  // same call (same clientMessageId) answers that message again, never a second send.
  send(conversationId, content, clientMessageId) {
    const path = `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages`;
    return this.request("POST", path, { content, client_message_id: clientMessageId });
  }

  retrySend(messageId) {
    return this.request("POST", `/api/v1/messages/${encodeURIComponent(messageId)}/retry`);
  }

  markRead(conversationId) {
    return this.request("POST", `/api/v1/conversations/${encodeURIComponent(conversationId)}/read`);
  }

  // Our stored media copy (`/media/{id}`) needs the Bearer header, which <img src> cannot send:
  // fetch it and hand back a blob: URL (the caller revokes it when the thread closes).
  async mediaBlobUrl(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${this.token}` } });
    if (!response.ok) throw new ApiError(response.status, "media_unavailable", "The media copy is not available.");
    return URL.createObjectURL(await response.blob());
  }
}
