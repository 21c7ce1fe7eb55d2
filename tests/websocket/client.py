"""A WebSocket client (the `websockets` package) for tests/websocket.rs.

Usage: client.py URL CA_FILE MODE
  echo          text and binary messages (one of 300 kB) echoed, then a
                close with code 4000 from the client
  server-close  asks the server to close ("close-me"), and reports the
                close code it received

Prints one "key value" line per step, then "done".
"""

import ssl
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

url, ca, mode = sys.argv[1:4]
context = ssl.create_default_context(cafile=ca)

with connect(url, ssl=context, subprotocols=["chat"], open_timeout=20) as ws:
    print("subprotocol", ws.subprotocol)
    if mode == "echo":
        ws.send("hello")
        print("text", ws.recv(timeout=20))
        ws.send(b"\x00\x01\xfe\xff")
        print("binary", ws.recv(timeout=20).hex())
        big = bytes(range(256)) * 1200
        ws.send(big)
        print("big", "same" if ws.recv(timeout=20) == big else "different")
        ws.close(code=4000, reason="client bye")
        print("closed", ws.close_code)
    elif mode == "server-close":
        ws.send("close-me")
        try:
            ws.recv(timeout=20)
            print("closed none")
        except ConnectionClosed as closed:
            print("closed", closed.rcvd.code if closed.rcvd else "none", closed.rcvd.reason if closed.rcvd else "")
    else:
        sys.exit(f"unknown mode {mode}")
print("done")
