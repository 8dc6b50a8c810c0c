// Helpers shared by VisionGuard's pages (the console and the demo page): the access token kept in
// this tab, API calls with it, the event stream, the Record toggle, and small formatting. No build
// step: a plain script that defines `window.VG`.
//
// Access control (AUTH_MODE=jwt): the token is kept in sessionStorage (this tab only) and sent as
// `Authorization: Bearer …` on every API call, never in a URL. Media the browser loads by itself
// (<img>, <video>, EventSource) use the signed URLs the API hands out.
"use strict";

(function () {
  const TOKEN_KEY = "visionguard.token";

  function storedToken() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // Keep `text` as this tab's token (an empty one forgets it); returns the token kept.
  function keepToken(text) {
    const token = (text || "").trim().replace(/^Bearer\s+/i, "");
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    return token;
  }

  function withToken(options, token) {
    const headers = new Headers((options && options.headers) || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    return { ...options, headers };
  }

  // fetch + JSON. A refusal throws an Error whose message is the server's own sentence (`detail`),
  // with `status`, `code`, `detail` and `retryAfter` (the header's seconds, capped at 300; else
  // null) set; an unreachable server throws one with status 0.
  async function api(path, options, token = storedToken()) {
    let response;
    try {
      response = await fetch(path, withToken(options, token));
    } catch (e) {
      const error = new Error("The server cannot be reached (" + e.message + ")");
      error.status = 0;
      throw error;
    }
    if (!response.ok) {
      let detail = "HTTP " + response.status, code = "";
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        code = typeof body.code === "string" ? body.code : "";
      } catch (e) { /* not JSON */ }
      const error = new Error(detail);
      error.status = response.status;
      error.code = code;
      error.detail = detail;
      const retryAfter = parseInt(response.headers.get("Retry-After"), 10);
      error.retryAfter = retryAfter > 0 ? Math.min(retryAfter, 300) : null;
      throw error;
    }
    return response.json();
  }

  // The scopes a JWT claims (its payload's space-separated `scope`), read without checking the
  // signature: only to hide what the server would refuse anyway. [] when it cannot be read.
  function tokenScopes(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const claims = JSON.parse(atob(padded));
      return typeof claims.scope === "string" ? claims.scope.split(/\s+/).filter(Boolean) : [];
    } catch (e) {
      return [];
    }
  }

  // An element with text (never HTML: names and errors come from the server's configuration).
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function formatBytes(n) {
    return n >= 1024 * 1024 ? (n / (1024 * 1024)).toFixed(1) + " MB" : Math.ceil(n / 1024) + " KB";
  }

  function formatDuration(s) {
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
  }

  // Resolve when ICE gathering is complete, or after `capMs` (a host with many interfaces).
  function iceGathered(peer, capMs = 2000) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, capMs);
      peer.addEventListener("icegatheringstatechange", () => {
        if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  // The live person events at `url` (a stream_url), resuming after `lastId` when it is not null
  // (EventFeed's stream).
  // `on.show(event)` per event, `on.reset()` when the server's ids began again (it keeps no
  // EVENTS_FILE), `on.state(text)`, and `on.closed(source)` when a refused reconnect closed it
  // (its signed URL expired): then ask for a fresh URL and resume from the last event shown.
  // EventSource reconnects by itself (with Last-Event-ID) otherwise.
  function openEventStream(url, lastId, on) {
    if (lastId !== null) url += (url.includes("?") ? "&" : "?") + "last_event_id=" + lastId;
    const source = new EventSource(url);
    for (const type of ["person_seen", "person_gone"]) {
      source.addEventListener(type, (m) => on.show(JSON.parse(m.data)));
    }
    source.addEventListener("reset", () => on.reset());
    source.onopen = () => on.state("live");
    source.onerror = () => {
      on.state("reconnecting");
      if (source.readyState === EventSource.CLOSED) on.closed(source);
    };
    return source;
  }

  // A list of person events, newest on top, at most `shown`: the newest of /api/events, then the
  // live ones from its `stream_url`, resuming after the last one shown. `item(event)` makes an
  // event's element, `seen(event)` hears of each new one, `stateBox` says how the stream is.
  // `load()` throws the API's refusal for the page to show; when a refused reconnect closes the
  // stream (its signed URL expired), the page's `reload` runs 3 s later (`load()` again).
  class EventFeed {
    constructor({ list, stateBox, shown, item, seen = () => {}, reload, api: call = api }) {
      Object.assign(this, { list, stateBox, shown, item, seen, reload, call });
      this.lastId = null;
      this.stream = null;
      this.retry = null;
      this.loads = 0; // each load() and close() counts: only the newest load opens a stream
    }

    show(e) {
      if (this.lastId !== null && e.id <= this.lastId) return; // already shown
      this.lastId = e.id;
      this.seen(e);
      this.list.prepend(this.item(e));
      while (this.list.children.length > this.shown) this.list.lastChild.remove();
    }

    // The list, then the stream; the /api/events answer, or undefined when a stream is open.
    async load() {
      if (this.stream) return undefined;
      clearTimeout(this.retry);
      const load = ++this.loads;
      let body;
      try {
        const since = this.lastId !== null ? `&since=${this.lastId}` : "";
        body = await this.call(`/api/events?limit=${this.shown}${since}`);
      } catch (e) {
        if (load !== this.loads) return undefined; // a newer load (e.g. with a new token) says how it is
        this.stateBox.textContent = e.status === 401 || e.status === 403 ? "needs a token" : "unavailable";
        throw e;
      }
      if (load !== this.loads || this.stream) return undefined; // two at once (page start, then Connect)
      body.events.slice().reverse().forEach((e) => this.show(e)); // oldest first: the newest ends on top
      const stream = openEventStream(body.stream_url, this.lastId, {
        show: (e) => this.show(e),
        reset: () => { this.lastId = null; this.list.replaceChildren(); },
        state: (text) => { this.stateBox.textContent = text; },
        closed: () => {
          if (this.stream !== stream) return;
          this.stream = null;
          this.retry = setTimeout(this.reload, 3000);
        },
      });
      this.stream = stream;
      return body;
    }

    close() {
      this.loads += 1; // a load on its way opens nothing
      if (this.stream) this.stream.close();
      this.stream = null;
    }
  }

  // A Record button for the source `sourceOf()` names: POST or DELETE /api/sources/{name}/record
  // (`admin` when access control is on) through `api`. While that source records it is pressed and
  // says `recordingText(seconds)`, counting. `learn(recordings)` takes what is in progress from a
  // /api/recordings answer (the source routes' manual and continuous recordings).
  class RecordToggle {
    constructor({ button, sourceOf, api: call = api, recordingText, noSourceTitle }) {
      Object.assign(this, { button, sourceOf, call, recordingText, noSourceTitle });
      this.since = {}; // source → start (ms since the epoch) of its recording in progress
      this.busy = false;
      this.timer = null;
    }

    show() {
      const source = this.sourceOf();
      const since = this.since[source];
      const button = this.button;
      button.disabled = this.busy || !source;
      button.classList.toggle("on", since !== undefined);
      button.setAttribute("aria-pressed", String(since !== undefined));
      clearInterval(this.timer);
      if (since !== undefined) {
        button.textContent = this.recordingText(Math.max(0, Math.round((Date.now() - since) / 1000)));
        button.title = "Stop recording " + source;
        this.timer = setInterval(() => this.show(), 1000);
      } else {
        button.textContent = "Record";
        button.title = source ? "Record " + source : this.noSourceTitle;
      }
    }

    learn(recordings) {
      this.since = {};
      for (const r of recordings) { // the newest first: keep each source's newest in progress
        if (r.state === "recording" && (r.trigger === "manual" || r.trigger === "continuous")
          && !(r.source in this.since)) this.since[r.source] = Date.parse(r.started_at);
      }
    }

    // Start or stop the chosen source's recording. False when there was nothing to do (no source,
    // or a click while the last one is on its way); a refusal throws the API's error.
    async toggle() {
      const source = this.sourceOf();
      if (!source || this.busy) return false;
      const path = `/api/sources/${encodeURIComponent(source)}/record`;
      this.busy = true;
      this.show();
      try {
        if (this.since[source] !== undefined) {
          await this.call(path, { method: "DELETE" });
          delete this.since[source];
        } else {
          const started = await this.call(path, { method: "POST" });
          this.since[source] = Date.parse(started.started_at);
        }
        return true;
      } finally {
        this.busy = false;
        this.show();
      }
    }
  }

  window.VG = { TOKEN_KEY, storedToken, keepToken, withToken, api, tokenScopes, el, formatBytes, formatDuration,
    iceGathered, EventFeed, RecordToggle };
})();
