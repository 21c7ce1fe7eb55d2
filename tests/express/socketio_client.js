// A Socket.IO client for tests/websocket.rs: connects to the URL in argv
// with the default transports (HTTP long-polling first, then the upgrade
// to a WebSocket), waits for that upgrade, sends one "echo" and prints
// "result JSON" with what came back; "error TEXT" on failure. Trusts the
// CA of NODE_EXTRA_CA_CERTS.

const { io } = require("socket.io-client");

const url = process.argv[2];
const socket = io(url, { reconnection: false });
const fail = (text) => {
  console.log(`error ${text}`);
  process.exit(1);
};
setTimeout(() => fail("no result within 20 s"), 20000).unref();

// The engine's first transport, seen when it opens (the socket's own
// "connect" may come after the upgrade), and its upgrade.
let first = null;
const upgraded = new Promise((resolve) => {
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    first = engine.transport.name;
    if (first === "websocket") {
      resolve();
    } else {
      engine.once("upgrade", () => resolve());
    }
  });
});
const connected = new Promise((resolve) => socket.on("connect", resolve));
socket.on("connect_error", (error) => fail(`connect: ${error.message}`));

Promise.all([upgraded, connected]).then(() => {
  socket.once("echoed", (reply) => {
    const transport = socket.io.engine.transport.name;
    console.log(`result ${JSON.stringify({ first, transport, reply })}`);
    socket.close();
    process.exit(0);
  });
  socket.emit("echo", "hello over socket.io");
});
