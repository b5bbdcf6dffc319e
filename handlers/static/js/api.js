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

  async request(method, path) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${this.token}`, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "network_error", "The server cannot be reached.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const code = (body && body.error) || "http_error";
      const message = (body && body.message) || `The server answered ${response.status}.`;
      throw new ApiError(response.status, code, message);
    }
    return body;
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
