// The mesh's events from `/events/stream`, read with fetch so the request carries the bearer token (EventSource
// cannot send it). It reconnects with backoff and resumes with `Last-Event-ID`, so no event is missed or repeated.
// An event larger than MAX_BUFFER is skipped (its id still counts), never a reason to reconnect: reconnecting would
// fetch the same event again, forever.
import {BASE, Refused, headers} from "./api.js";
import {MAX_BUFFER, RECONNECT_MAX_MS, RECONNECT_MIN_MS, STREAM_TAIL} from "./caps.js";

export class EventStream {
  constructor({onEvent, onState, lastId = null}) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = lastId;
    this.received = false;  // an event came through on this connection (the backoff starts again only then)
    this.stopped = false;
    this.controller = null;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let delay = RECONNECT_MIN_MS;
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        const url = new URL("events/stream", BASE);
        const extra = {Accept: "text/event-stream"};
        if (this.lastId !== null) extra["Last-Event-ID"] = String(this.lastId);
        else url.searchParams.set("tail", String(STREAM_TAIL));
        const response = await fetch(url, {headers: headers(extra), cache: "no-store",
                                           signal: this.controller.signal});
        if (response.status === 401) throw new Refused("the API refused the token (401)");
        if (!response.ok || !response.body) throw new Error(`the stream answered ${response.status}`);
        this.onState("open", "");
        this.received = false;
        await this.read(response.body);
        if (!this.stopped) this.onState("reconnecting", "the stream ended");
      } catch (error) {
        if (error instanceof Refused) {
          this.onState("refused", error.message);
          return;
        }
        if (this.stopped) return;
        this.onState("reconnecting", error.message || String(error));
      }
      this.controller.abort();  // whatever is left of this response is not read
      if (this.received) delay = RECONNECT_MIN_MS;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let skipping = false;  // inside an event too large to keep: drop it up to its end
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          if (skipping) skipping = false;
          else this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        if (buffer.length > MAX_BUFFER) {
          if (!skipping) this.skip(buffer);
          skipping = true;
          buffer = buffer.slice(-1);  // a "\n" that may begin the event's end
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  skip(start) {
    const id = /^id: ?(\d+)$/m.exec(start.slice(0, 200));
    if (id) this.lastId = Number(id[1]);
    this.received = true;
    console.warn(`event ${id ? id[1] : "?"} skipped: larger than the page reads (${MAX_BUFFER} characters)`);
  }

  dispatch(block) {
    let id = null;
    let type = "";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;  // a comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (id !== null && /^\d+$/.test(id)) this.lastId = Number(id);
    if (!data.length) return;
    let event;
    try {
      event = JSON.parse(data.join("\n"));
    } catch {
      return;  // not an event (the ingress refuses what could make one)
    }
    this.received = true;
    if (event && typeof event === "object") this.onEvent({seq: this.lastId, type: String(type || event.type), event});
  }
}
