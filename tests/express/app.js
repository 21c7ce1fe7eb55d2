// An Express app written the way ssegate's users write them: a page API and
// an event stream that resumes after the Last-Event-ID the browser sends.
// Run as `NAME=a PORT=0 node app.js`; prints "listening PORT" when ready.
"use strict";
const express = require("express");

const name = process.env.NAME || "app";
const app = express();

app.get("/healthz", (req, res) => res.send("ok"));
app.get("/name", (req, res) => res.send(name));

// Event ids count on from the Last-Event-ID the client resumes with, so a
// client that sees every id once, in order, lost nothing in a failover.
app.get("/events", (req, res) => {
  res.writeHead(200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    Connection: "keep-alive",
  });
  let id = Number(req.get("Last-Event-ID") || 0);
  res.write("retry: 200\n\n");
  const timer = setInterval(() => {
    id += 1;
    res.write(`id: ${id}\nevent: tick\ndata: ${name}\n\n`);
  }, 50);
  req.on("close", () => clearInterval(timer));
});

const server = app.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
