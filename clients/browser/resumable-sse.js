// resumable-sse.js: a small, dependency-free browser helper for resumable Server-Sent Events.
// Licence: MIT OR Apache-2.0, like the rest of the resumable-sse workspace.
// Served by `sse-server` at `/resumable-sse.js`; copy it into any application as it is.

/**
 * A browser client for a resumable-SSE endpoint (`GET /events?stream=…`), around the browser's
 * own `EventSource` or, when headers are needed, `fetch` with a streaming body.
 *
 * What it adds to a bare `EventSource`:
 *
 * - `onConnected` and `onReset` with their parsed JSON data (`connected`: `session`,
 *   `resumed`, `replay`, `reset`; `reset`: `reason`, `streams`). A reset means events were
 *   lost: refetch your state.
 * - One handler per event type in `on` (`message` for events published without a name), each
 *   called with `{type, data, id, replayed}`; `replayed` is `true` for the events the server
 *   announced in `connected.replay` (sent before live delivery).
 * - The connection state (`connecting`, `open`, `reconnecting`, `closed`) and `onStateChange`.
 * - Counts: `connections`, `replayed`, `resets`.
 * - `storage` (`sessionStorage` or `localStorage`): the id of the last event **processed** is
 *   saved after its handler returned, and a new page (a reload, a new tab with
 *   `localStorage`) starts from it by passing it as the `lastEventId` query parameter, the
 *   server's fallback for clients that cannot set `Last-Event-ID`. An event the page did not
 *   process before it went away is delivered again to the next page; none is skipped.
 * - `mode: "fetch"`: for request headers (`Authorization: Bearer …`), cookie-less and
 *   cross-origin clients. The session token the server answers in `x-sse-session` is sent
 *   back on every reconnect, so the connection keeps its session (and its private stream)
 *   without cookies. The stream is parsed exactly as the WHATWG HTML standard says an
 *   `EventSource` parses it, and reconnects send `Last-Event-ID`, honour the server's
 *   `retry:`, back off exponentially with jitter up to a cap, and stop for good, like
 *   `EventSource`, on an answer other than `200 text/event-stream`.
 *
 * - The back/forward cache: a page frozen by the browser lets go of its connection
 *   (`pagehide`) and resumes from its own last id when shown again (`pageshow`).
 *
 * In `eventsource` mode (the default) only the event types named in `on` (plus `connected`
 * and `reset`) are seen, so `replayed` is exact when the page listens to every type the
 * streams carry; `fetch` mode sees every event.
 *
 * @example
 * import { ResumableEventSource } from "/resumable-sse.js";
 * const sse = new ResumableEventSource("/events?stream=chat", {
 *   storage: sessionStorage,                      // resume across reloads
 *   on: { message: e => show(e.data), price: e => updatePrice(JSON.parse(e.data)) },
 *   onReset: info => refetchState(info.streams),
 *   onStateChange: state => (indicator.textContent = state),
 * });
 * // later: sse.close();
 *
 * @example
 * // Headers: fetch mode.
 * const sse = new ResumableEventSource("https://events.example.com/events?stream=orders", {
 *   mode: "fetch",
 *   headers: () => ({ Authorization: "Bearer " + currentToken() }),
 *   credentials: "omit",
 *   on: { message: e => show(e.data) },
 * });
 */
export class ResumableEventSource {
  /**
   * Opens the connection at once.
   *
   * @param {string | URL} url The endpoint, e.g. `/events?stream=a&stream=b`.
   * @param {object} [options]
   * @param {"eventsource" | "fetch"} [options.mode] `eventsource` (default) or `fetch`.
   * @param {Object<string, function(ResumableEvent): void>} [options.on] A handler per event
   *   type (`message` for unnamed events). Default: none.
   * @param {function(object, ResumableEvent): void} [options.onConnected] The `connected`
   *   event's data: `{session, resumed, replay, reset}`.
   * @param {function(object, ResumableEvent): void} [options.onReset] A `reset` event's data:
   *   `{reason, streams}`.
   * @param {function(string, string): void} [options.onStateChange] `(state, previous)`.
   * @param {function(Error): void} [options.onError] A failed attempt, or the reason the
   *   connection closed for good (`error.status` holds the HTTP status when there is one).
   * @param {Storage} [options.storage] Where to keep the last processed id across page loads.
   * @param {string} [options.storageKey] Its key; default `resumable-sse:` + the URL.
   * @param {boolean} [options.withCredentials] `EventSource` mode: cross-origin with cookies.
   * @param {Object<string, string> | function(): Object<string, string>} [options.headers]
   *   Fetch mode: request headers, or a function giving them for each attempt.
   * @param {RequestCredentials} [options.credentials] Fetch mode: default `same-origin`.
   * @param {string | null} [options.sessionHeader] Fetch mode: the header carrying the session
   *   token (default `x-sse-session`; `null`: none).
   * @param {{initial?: number, max?: number}} [options.backoff] Delays in ms: `initial`
   *   before the server's `retry:` is known (default 2000, the server's default), `max` the
   *   cap (default 30000). Consecutive failures double the delay; each is jittered to 50–100 %.
   */
  constructor(url, options = {}) {
    this.url = new URL(url, globalThis.location?.href).href;
    this.options = options;
    this.mode = options.mode ?? "eventsource";
    if (this.mode !== "eventsource" && this.mode !== "fetch") {
      throw new TypeError(`mode must be "eventsource" or "fetch", not ${this.mode}`);
    }
    /** `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "connecting";
    /** Connections opened (`connected` events seen). */
    this.connections = 0;
    /** Events delivered as replays (announced by `connected.replay`), over all connections. */
    this.replayed = 0;
    /** `reset` events seen. */
    this.resets = 0;
    /** The session id from the latest `connected` event. */
    this.session = null;
    /** The id of the last event seen (the cursor); `""` before any. */
    this.lastEventId = "";
    this.storageKey = options.storageKey ?? "resumable-sse:" + this.url;
    this._pendingReplay = 0;
    this._closed = false;
    this._failures = 0;
    this._timer = null;
    this._token = null;
    this._retry = options.backoff?.initial ?? 2000;
    this._abort = null;
    // Bumped whenever the connection is given up (close, or the page frozen), so a fetch loop
    // of an earlier connection ends instead of reconnecting.
    this._generation = 0;
    const saved = this._load();
    if (saved) this.lastEventId = saved;
    this._start(saved);
    // A page kept in the back/forward cache is frozen with its connections open: the server
    // keeps writing to it, and a new page of the same session would not get what it took.
    // Let go when frozen; on return carry on from this page's own last id (not the saved one,
    // which a newer page of this tab may have moved on).
    this._onPageHide = (e) => {
      if (e.persisted && !this._closed) this._stop();
    };
    this._onPageShow = (e) => {
      if (e.persisted && !this._closed) {
        this._setState("reconnecting");
        this._start(this.lastEventId);
      }
    };
    globalThis.addEventListener?.("pagehide", this._onPageHide);
    globalThis.addEventListener?.("pageshow", this._onPageShow);
  }

  /** Closes the connection for good. */
  close() {
    this._closed = true;
    this._stop();
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    globalThis.removeEventListener?.("pageshow", this._onPageShow);
    this._setState("closed");
  }

  _start(startId) {
    if (this.mode === "fetch") {
      this._sentHeader = false;
      this._fetchLoop(true, this._generation);
    } else {
      this._openEventSource(startId);
    }
  }

  _stop() {
    this._generation += 1;
    clearTimeout(this._timer);
    this._source?.close();
    this._source = null;
    this._abort?.abort();
  }

  // --- shared by both modes ---

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._call(this.options.onStateChange, state, previous);
  }

  _call(handler, ...args) {
    if (!handler) return;
    try {
      handler(...args);
    } catch (error) {
      // An application's exception must not stop the stream (EventSource behaves alike);
      // report it asynchronously, as an uncaught error.
      setTimeout(() => {
        throw error;
      });
    }
  }

  _load() {
    try {
      return this.options.storage?.getItem(this.storageKey) ?? "";
    } catch {
      return "";
    }
  }

  _save(id) {
    const storage = this.options.storage;
    if (!storage || !id) return;
    try {
      storage.setItem(this.storageKey, id);
    } catch {
      // Storage full or denied: resuming falls back to the session's recorded cursor.
    }
  }

  /** One event, in stream order: the handler runs first, then its id is saved. */
  _dispatch(type, data, id) {
    if (id !== undefined) this.lastEventId = id;
    if (type === "connected") {
      const info = parse(data);
      this.connections += 1;
      this.session = info.session ?? null;
      this._pendingReplay = Number(info.replay) || 0;
      this._failures = 0;
      this._setState("open");
      this._call(this.options.onConnected, info, { type, data, id, replayed: false });
    } else if (type === "reset") {
      this.resets += 1;
      this._call(this.options.onReset, parse(data), { type, data, id, replayed: false });
    } else {
      const replayed = this._pendingReplay > 0;
      if (replayed) {
        this._pendingReplay -= 1;
        this.replayed += 1;
      }
      this._call(this.options.on?.[type], { type, data, id, replayed });
    }
    // After the handler: a page that goes away now has processed this event.
    this._save(this.lastEventId);
  }

  _delay() {
    const max = this.options.backoff?.max ?? 30000;
    const base = Math.min(max, this._retry * 2 ** Math.min(this._failures, 16));
    this._failures += 1;
    return base / 2 + Math.random() * (base / 2);
  }

  // --- EventSource mode ---

  _openEventSource(startId) {
    let url = this.url;
    if (startId) {
      const u = new URL(url);
      u.searchParams.set("lastEventId", startId);
      url = u.href;
    }
    const source = new EventSource(url, { withCredentials: !!this.options.withCredentials });
    this._source = source;
    source.onopen = () => this._setState("open");
    source.onerror = () => {
      if (this._closed || this._source !== source) return;
      if (startId && source.readyState !== EventSource.CLOSED) {
        // The browser would reconnect to the same URL, whose `lastEventId` is the start id:
        // wherever `Last-Event-ID` is dropped the server would replay from there again. A new
        // EventSource carries the newest id instead.
        source.close();
        this._setState("reconnecting");
        this._retry = this.options.backoff?.initial ?? 2000;
        this._timer = setTimeout(() => this._openEventSource(this.lastEventId), this._delay());
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        this._closed = true;
        this._setState("closed");
        this._call(this.options.onError, new Error("the event stream failed for good"));
      } else {
        this._setState("reconnecting");
      }
    };
    const listen = (type) =>
      source.addEventListener(type, (e) => this._dispatch(type, e.data, e.lastEventId));
    listen("connected");
    listen("reset");
    for (const type of Object.keys(this.options.on ?? {})) {
      if (type !== "connected" && type !== "reset") listen(type);
    }
  }

  // --- fetch mode ---

  async _fetchLoop(first, generation) {
    const current = () => !this._closed && generation === this._generation;
    while (current()) {
      if (!first) {
        this._setState("reconnecting");
        await new Promise((resolve) => {
          this._timer = setTimeout(resolve, this._delay());
        });
        if (!current()) return;
      }
      first = false;
      let fatal = null;
      try {
        fatal = await this._fetchOnce();
      } catch (error) {
        if (!current()) return;
        this._call(this.options.onError, error);
      }
      if (!current()) return;
      if (fatal) {
        this._closed = true;
        this._setState("closed");
        this._call(this.options.onError, fatal);
        return;
      }
    }
  }

  /** One request: resolves when the body ends (to reconnect), or with an Error when fatal. */
  async _fetchOnce() {
    const headers = new Headers(
      typeof this.options.headers === "function" ? this.options.headers() : this.options.headers,
    );
    headers.set("accept", "text/event-stream");
    if (this.lastEventId) headers.set("last-event-id", this.lastEventId);
    const sessionHeader = this.options.sessionHeader === undefined
      ? "x-sse-session"
      : this.options.sessionHeader;
    if (sessionHeader && this._token) headers.set(sessionHeader, this._token);
    let url = this.url;
    if (this.lastEventId && !this._sentHeader) {
      // The first request of a page may come after a reload: the saved id also goes in the
      // query, for servers behind something that drops the header. The header wins.
      const u = new URL(url);
      u.searchParams.set("lastEventId", this.lastEventId);
      url = u.href;
    }
    this._sentHeader = true;
    this._abort = new AbortController();
    const response = await fetch(url, {
      headers,
      credentials: this.options.credentials ?? "same-origin",
      cache: "no-store",
      signal: this._abort.signal,
    });
    const type = response.headers.get("content-type") ?? "";
    if (response.status !== 200 || !/^text\/event-stream\s*(;|$)/i.test(type)) {
      const error = new Error(`the event stream answered ${response.status} ${type}`);
      error.status = response.status;
      response.body?.cancel().catch(() => {});
      return error;
    }
    const token = sessionHeader && response.headers.get(sessionHeader);
    if (token) this._token = token;
    this._setState("open");
    const parser = new SseParser((type, data, id) => this._dispatch(type, data, id), (ms) => {
      this._retry = ms;
    }, this.lastEventId);
    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // strips one leading BOM, as the standard says
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      // However the body ended (the server closed it, or the network failed), the next
      // attempt sends the last id the parser took; a partial event is dropped, as the
      // standard says.
      this.lastEventId = parser.lastEventId;
    }
    return null;
  }
}

/**
 * A parser of the `text/event-stream` format exactly as the WHATWG HTML standard (9.2.6)
 * describes it: lines end at CRLF, LF or CR (also split across chunks); a line starting with
 * `:` is a comment; `field:value` with one leading space of the value removed, a line without a
 * colon is a field with an empty value; `data` lines join with LF; `event` sets the type;
 * `id` sets the last event id unless it contains NUL, and it persists over later events;
 * `retry` with ASCII digits only sets the reconnection time; unknown fields are ignored; an
 * empty line dispatches (nothing when no data was given, but the last event id is still
 * updated). Decoding (UTF-8, one leading BOM dropped) is the caller's: feed it text.
 */
export class SseParser {
  /**
   * @param {function(string, string, string): void} onEvent `(type, data, lastEventId)`.
   * @param {function(number): void} [onRetry] A valid `retry:` value in ms.
   * @param {string} [lastEventId] The id the connection started from.
   */
  constructor(onEvent, onRetry, lastEventId = "") {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.lastEventId = lastEventId;
    this._idBuffer = lastEventId;
    this._data = "";
    this._type = "";
    this._line = "";
    this._afterCR = false;
  }

  /** Feeds decoded text. */
  push(text) {
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10 /* LF */ && this._afterCR && i === start && this._line === "") {
        // The LF of a CRLF whose CR ended the previous line (maybe in the previous chunk).
        this._afterCR = false;
        start = i + 1;
        continue;
      }
      if (c === 10 || c === 13) {
        this._lineDone(this._line + text.slice(start, i));
        this._line = "";
        this._afterCR = c === 13;
        start = i + 1;
      } else {
        this._afterCR = false;
      }
    }
    if (start < text.length) {
      this._line += text.slice(start);
      this._afterCR = false;
    }
  }

  _lineDone(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) return;
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data += value + "\n";
        break;
      case "id":
        if (!value.includes("\0")) this._idBuffer = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.onRetry?.(parseInt(value, 10));
        break;
      default:
        break;
    }
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    if (this._data === "") {
      this._type = "";
      return;
    }
    const data = this._data.slice(0, -1);
    const type = this._type || "message";
    this._data = "";
    this._type = "";
    this.onEvent(type, data, this.lastEventId);
  }
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return {};
  }
}

/**
 * @typedef {object} ResumableEvent
 * @property {string} type The event type (`message` for unnamed events).
 * @property {string} data The data, lines joined with LF.
 * @property {string} id The event's id: the connection's cursor after it.
 * @property {boolean} replayed `true` when the server sent it as a replay.
 */
