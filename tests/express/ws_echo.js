// A WebSocket echo server (the `ws` package) for tests/websocket.rs, which
// runs it behind ssegate. It also serves the page the Chromium test opens,
// and takes that page's result at /result.
//
// Prints, one per line:
//   listening PORT
//   open PATH protocol=P version=V      a WebSocket was accepted
//   closed CODE REASON                  the client's close frame
//   result QUERY                        what the page reported
// Messages are echoed as they came (text as text, binary as binary); the
// text "close-me" is answered with a close of code 4001 instead.

const http = require("node:http");
const { WebSocketServer } = require("ws");

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>ssegate WebSocket test</title>
<script>
(async () => {
  const report = (result) => fetch("/result?" + new URLSearchParams(result));
  try {
    const nav = performance.getEntriesByType("navigation")[0];
    const ws = new WebSocket("wss://" + location.host + "/echo", ["chat"]);
    ws.binaryType = "arraybuffer";
    const next = () => new Promise((resolve, reject) => {
      ws.onmessage = (event) => resolve(event.data);
      ws.onclose = (event) => reject(new Error("closed " + event.code));
    });
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onclose = (event) => reject(new Error("not opened: " + event.code));
    });
    ws.send("hello from chromium");
    const text = await next();
    ws.send(new Uint8Array([1, 2, 3, 255]));
    const binary = Array.from(new Uint8Array(await next())).join(",");
    const closed = new Promise((resolve) => { ws.onclose = (event) => resolve(event.code); });
    ws.close(1000, "done");
    const code = await closed;
    await report({ text, binary, protocol: ws.protocol, page: nav.nextHopProtocol, code });
  } catch (error) {
    await report({ error: String(error) });
  }
})();
</script>
`;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/page") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(PAGE);
  } else if (url.pathname === "/result") {
    console.log(`result ${url.search.slice(1)}`);
    res.writeHead(204);
    res.end();
  } else {
    res.writeHead(404);
    res.end();
  }
});

const wss = new WebSocketServer({
  server,
  // The first subprotocol the client offers, so the test sees it pass
  // both ways.
  handleProtocols: (protocols) => protocols.values().next().value ?? false,
});
wss.on("connection", (ws, req) => {
  console.log(
    `open ${req.url} protocol=${ws.protocol || "-"} version=${req.headers["sec-websocket-version"]}`,
  );
  ws.on("message", (data, isBinary) => {
    if (!isBinary && data.toString() === "close-me") {
      ws.close(4001, "server bye");
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on("close", (code, reason) => console.log(`closed ${code} ${reason}`));
});

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
