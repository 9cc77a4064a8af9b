// An independent client for sse-server: Node's `eventsource` package, which keeps no cookies
// and never sees the `x-sse-session` header, so every reconnect comes back without a session
// token, with only `Last-Event-ID`. Run by examples/sse-server/tests/node_client.rs.
//
//   node check.mjs clients URL CLIENTS [LATENCY_MS]
//       Opens CLIENTS EventSources on URL and prints one JSON line per thing each sees:
//       {"client":0,"type":"connected"|"reset"|"message","id":"…","data":"…"}
//       {"client":0,"type":"error","state":0|2,"message":"…","code":…}
//       Each connection attempt waits a random 0…LATENCY_MS first (a network's latency), so
//       clients cut at the same moment do not all come back at the same moment. Runs until
//       its standard input ends.
//
//   node check.mjs bad-id URL
//       One GET of URL whose Last-Event-ID header holds bytes that are not UTF-8, with Node's
//       own http module; prints {"status":200,"events":[{"event":"…","id":"…","data":"…"}…]}
//       once it has read the `connected` event and the event after it, then exits.

import http from "node:http";
import { EventSource } from "eventsource";

const [mode, ...args] = process.argv.slice(2);

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function usage() {
  process.stderr.write("usage: node check.mjs clients URL CLIENTS [LATENCY_MS] | bad-id URL\n");
  process.exit(2);
}

if (mode === "clients") {
  const [url, count, latency = "0"] = args;
  const clients = Number(count);
  const latencyMs = Number(latency);
  if (!url || !Number.isInteger(clients) || clients < 1 || !(latencyMs >= 0)) usage();
  for (let client = 0; client < clients; client++) {
    const fetchWithLatency = async (input, init) => {
      await new Promise((resolve) => setTimeout(resolve, Math.random() * latencyMs));
      return fetch(input, init);
    };
    const source = new EventSource(url, { fetch: fetchWithLatency });
    for (const type of ["connected", "reset", "message"]) {
      source.addEventListener(type, (event) => {
        emit({ client, type, id: event.lastEventId, data: event.data });
      });
    }
    source.addEventListener("error", (event) => {
      // readyState CONNECTING (0): it will retry; CLOSED (2): it gave up for good.
      emit({
        client,
        type: "error",
        state: source.readyState,
        message: event.message ?? null,
        code: event.code ?? null,
      });
    });
  }
  // The test ends this process; should the test itself die, the pipe closes and so do we.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
} else if (mode === "bad-id") {
  const [url] = args;
  if (!url) usage();
  // Latin-1 bytes that are not UTF-8 text: 0xFF 0xFE, then an invalid continuation.
  const lastEventId = "\u00ff\u00fe\u00c3(";
  const request = http.get(url, { headers: { accept: "text/event-stream", "last-event-id": lastEventId } });
  request.on("response", (response) => {
    const events = [];
    let buffer = "";
    response.setEncoding("utf8");
    response.on("data", (chunk) => {
      buffer += chunk.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { event: "message", id: null, data: null };
        let hasData = false;
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon === 0) continue;
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event.event = value;
          else if (field === "id") event.id = value;
          else if (field === "data") {
            event.data = hasData ? `${event.data}\n${value}` : value;
            hasData = true;
          }
        }
        if (hasData) events.push(event);
        if (events.length >= 2) {
          emit({ status: response.statusCode, events });
          process.exit(0);
        }
      }
    });
    response.on("end", () => {
      emit({ status: response.statusCode, events, ended: true });
      process.exit(0);
    });
  });
  request.on("error", (err) => {
    process.stderr.write(`bad-id: ${err.message}\n`);
    process.exit(1);
  });
} else {
  usage();
}
