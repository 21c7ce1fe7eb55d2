// A Socket.IO server for tests/websocket.rs, behind ssegate. Prints
// "listening PORT", then "upgraded TRANSPORT" when a client's connection
// moves from polling to another transport. Answers each "echo" message
// with an "echoed" carrying the same text and the transport it came over.

const http = require("node:http");
const { Server } = require("socket.io");

const server = http.createServer();
const io = new Server(server);
io.on("connection", (socket) => {
  socket.conn.on("upgrade", (transport) => console.log(`upgraded ${transport.name}`));
  socket.on("echo", (text) => socket.emit("echoed", { text, transport: socket.conn.transport.name }));
});

server.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
