// One EventSource client (the `eventsource` package, which reconnects as
// browsers do: after `retry:`, with Last-Event-ID) for the Redis-sourced
// streams of tests/redis_source.rs. Run as
// `node redis_source_client.js URL[,URL...] [LAST_EVENT_ID]`, with TYPES
// the event types to listen to (comma-separated; default "message").
// Each (re)connection goes to the next URL in turn, as a balancer in front
// of several instances may send it. LAST_EVENT_ID is sent on the first
// connection; later ones send the id of the last event received.
// Prints "open URL", "event {"type","id","data"}" (JSON) and "error MESSAGE".
"use strict";
const { EventSource } = require("eventsource");

const urls = process.argv[2].split(",");
const first = process.argv[3];
const types = (process.env.TYPES || "message").split(",");
let connections = 0;
let current = urls[0];

const source = new EventSource(urls[0], {
  fetch: (_input, init) => {
    current = urls[connections % urls.length];
    connections += 1;
    const headers = { ...init.headers };
    if (connections === 1 && first) headers["Last-Event-ID"] = first;
    return fetch(current, { ...init, headers });
  },
});
source.onopen = () => console.log(`open ${current}`);
source.onerror = (e) => console.log(`error ${e.message || ""}`);
for (const type of types) {
  source.addEventListener(type, (e) =>
    console.log(`event ${JSON.stringify({ type, id: e.lastEventId, data: e.data })}`),
  );
}
