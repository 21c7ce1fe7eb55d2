// EventSource clients (the `eventsource` package, which follows the
// browser's reconnection rules: `retry:`, Last-Event-ID). Run as
// `node clients.js URL COUNT`; prints "open K", "event K ID DATA" and
// "error K" lines, K being the client's number.
"use strict";
const { EventSource } = require("eventsource");

const [url, count] = [process.argv[2], Number(process.argv[3] || 1)];
for (let k = 0; k < count; k++) {
  const source = new EventSource(url);
  source.onopen = () => console.log(`open ${k}`);
  source.addEventListener("tick", (e) => console.log(`event ${k} ${e.lastEventId} ${e.data}`));
  source.onerror = () => console.log(`error ${k}`);
}
