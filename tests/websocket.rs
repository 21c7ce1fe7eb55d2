//! WebSockets through the proxy, with real clients: the Python `websockets`
//! library over HTTP/1.1, headless Chromium over HTTP/2 extended CONNECT,
//! Socket.IO (polling, then the upgrade), and raw sockets for the exact
//! rules (what is forwarded, refused answers, the idle timeout, drain).
//!
//! Needs Node.js with the packages of `tests/express` (`npm ci --prefix
//! tests/express`), python3 with `websockets`, and Chromium
//! (/usr/bin/chromium); `.ci/run` installs them. A test whose tool is
//! missing fails.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Starting Node, Python or a browser on two busy cores.
const LIMIT: Duration = Duration::from_secs(30);
/// RFC 6455 §1.3's sample key, which HTTP/1.1 clients send here.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------- helpers

/// `tests/express/ws_echo.js` and its port.
async fn ws_echo() -> (Script, u16) {
    let mut echo = Script::node("ws_echo.js", &[], &[]);
    let port = echo.line_after("listening ").await;
    (echo, port.parse().expect("port"))
}

/// An HTTP/1.1 WebSocket handshake for `path`, with `extra` header lines.
fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// The upstream's side of one WebSocket: the request head it received, and
/// the task that echoes every byte until the proxy closes its direction
/// (then it closes its own): it ends when the upstream connection is done.
struct UpstreamSocket {
    request: RawHead,
    echo: JoinHandle<()>,
}

/// Answers the next upgrade the raw upstream receives with a proper `101`
/// (plus `extra` header lines), then echoes.
async fn accept_and_echo(upstream: &mut RawUpstream, extra: &str) -> UpstreamSocket {
    let mut seen = upstream.next().await;
    let key = seen
        .request
        .get("sec-websocket-key")
        .unwrap_or_else(|| panic!("no key in {:?}", seen.request.raw))
        .to_owned();
    let accept = ssegate::websocket::accept_for(key.as_bytes());
    seen.write(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(seen.conn.buffered().is_empty(), "bytes before the 101");
    let echo = tokio::spawn(async move {
        let (mut from, mut to): (ReadHalf<TcpStream>, WriteHalf<TcpStream>) =
            tokio::io::split(seen.conn.io);
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
    });
    UpstreamSocket {
        request: seen.request,
        echo,
    }
}

/// Whether the upstream's side of a WebSocket ends within `limit`.
async fn upstream_closed(socket: UpstreamSocket, limit: Duration) -> bool {
    tokio::time::timeout(limit, socket.echo).await.is_ok()
}

/// An HTTP/1.1 WebSocket through the proxy to the raw upstream, which
/// echoes: the client's connection after the `101` it got, and the
/// upstream's side.
async fn h1_websocket(
    addr: std::net::SocketAddr,
    upstream: &mut RawUpstream,
    path: &str,
) -> (TlsConn, RawHead, UpstreamSocket) {
    let mut conn = raw_connect(addr, &[b"http/1.1"]).await;
    conn.write(handshake(path, "").as_bytes()).await;
    let socket = accept_and_echo(upstream, "").await;
    let head = conn.read_head().await;
    assert_eq!(head.status(), 101, "{:?}", head.raw);
    (conn, head, socket)
}

/// Sends `bytes` on an upgraded connection and reads them back.
async fn echo_round(conn: &mut TlsConn, bytes: &[u8]) {
    conn.write(bytes).await;
    assert_eq!(conn.read_exact(bytes.len()).await, bytes);
}

/// An HTTP/2 connection to the proxy, driven by the `h2` crate (which can
/// send `:protocol` and shows the server's SETTINGS).
async fn h2_connection(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tls = tls_connect(addr, &[b"h2"]).await;
    let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.expect("h2 ready")
}

/// An extended CONNECT for a WebSocket on `path` (RFC 8441 §5), as a
/// browser sends it.
fn extended_connect(path: &str) -> Request<()> {
    let mut req = Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .header("origin", "https://localhost")
        .body(())
        .expect("request");
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    req
}

/// The next data of an HTTP/2 stream (capacity released); None at its end
/// (which may come as an empty DATA frame with END_STREAM).
async fn h2_data(body: &mut h2::RecvStream) -> Option<Bytes> {
    loop {
        let data = tokio::time::timeout(WAIT_LIMIT, body.data())
            .await
            .expect("data in time")?
            .ok()?;
        let _ = body.flow_control().release_capacity(data.len());
        if !data.is_empty() {
            return Some(data);
        }
    }
}

// ---------------------------------------------------------------- real clients

/// The Python `websockets` client over HTTP/1.1 and TLS, through the proxy,
/// to a Node `ws` echo server. Catches: the upgrade fields dropped as
/// hop-by-hop (no 101), a wrong or missing `Sec-WebSocket-Protocol`,
/// buffered or lost bytes (a 300 kB message spans many reads and TLS
/// records), and a close frame that does not reach the other side.
#[tokio::test]
async fn python_websockets_client_echoes_text_and_binary_and_closes_through_the_proxy() {
    let (mut echo, port) = ws_echo().await;
    let proxy = spawn_proxy(([127, 0, 0, 1], port).into()).await;
    let url = format!("wss://localhost:{}/echo", proxy.addr.port());
    let client_py = repo_path("tests/websocket/client.py");
    let ca = dev_cert_path().display().to_string();

    let mut client = Script::python(&client_py, &[&url, &ca, "echo"]);
    assert_eq!(client.line_after("subprotocol ").await, "chat");
    assert_eq!(client.line_after("text ").await, "hello");
    assert_eq!(client.line_after("binary ").await, "0001feff");
    assert_eq!(client.line_after("big ").await, "same");
    assert_eq!(client.line_after("closed ").await, "4000");
    client.line_after("done").await;
    assert_eq!(
        echo.line_after("open ").await,
        "/echo protocol=chat version=13"
    );
    assert_eq!(echo.line_after("closed ").await, "4000 client bye");

    // The server's close reaches the client.
    let mut client = Script::python(&client_py, &[&url, &ca, "server-close"]);
    assert_eq!(client.line_after("closed ").await, "4001 server bye");
    client.line_after("done").await;
}

/// Headless Chromium showing one page; its process group is killed on Drop.
struct Chromium {
    child: Child,
    profile: TempDir,
}

impl Chromium {
    fn open(url: &str) -> Self {
        let profile = TempDir::new("chromium-profile");
        let stderr = std::fs::File::create(profile.path("stderr.log")).expect("stderr log");
        let child = Command::new(chromium_path())
            .args(HEADLESS_FLAGS)
            .arg(format!("--user-data-dir={}", profile.root().display()))
            .arg(url)
            .env_remove("DISPLAY")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{}", missing_tool("chromium", "chromium", &e)));
        Chromium { child, profile }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.profile.path("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_browser_group(&mut self.child);
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |text: &str| {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A page loaded through the proxy opens `new WebSocket("wss://...")` in
/// headless Chromium: text and binary messages echo and the close
/// completes. The proxy's access log shows the WebSocket came as an
/// HTTP/2 extended CONNECT. Catches: SETTINGS_ENABLE_CONNECT_PROTOCOL not
/// sent (Chromium then opens a separate HTTP/1.1 connection, logged as a
/// GET with status 101), an extended CONNECT refused or not turned into
/// an upgrade upstream, and the 200 or the stream's bytes not reaching
/// the browser.
#[tokio::test]
async fn chromium_opens_a_websocket_over_http2_extended_connect() {
    let (mut echo, port) = ws_echo().await;
    let upstream = format!("http://127.0.0.1:{port}");
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let mut proxy = SsegateProcess::start(
        &["--cert", &cert, "--key", &key, "--upstream", &upstream],
        LIMIT,
    )
    .await;
    let browser = Chromium::open(&format!("https://localhost:{}/page", proxy.addr.port()));
    let result = match tokio::time::timeout(LIMIT - Duration::from_secs(5), async {
        let opened = echo.line_after("open ").await;
        assert_eq!(opened, "/echo protocol=chat version=13");
        echo.line_after("result ").await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => panic!(
            "the page reported nothing; node:\n{}\nssegate:\n{}\nchromium stderr:\n{}",
            echo.transcript(),
            proxy.log(),
            browser.stderr()
        ),
    };
    let pairs = form_pairs(&result);
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in the page's result {pairs:?}"))
    };
    assert_eq!(field("text"), "hello from chromium", "{pairs:?}");
    assert_eq!(field("binary"), "1,2,3,255", "{pairs:?}");
    assert_eq!(field("protocol"), "chat", "{pairs:?}");
    assert_eq!(field("code"), "1000", "{pairs:?}");
    assert_eq!(field("page"), "h2", "the page itself came over HTTP/2");

    // The WebSocket's access line, written when it ended.
    proxy.wait_for_log("path=/echo").await;
    let log = proxy.log();
    let line = log
        .lines()
        .find(|line| line.contains("path=/echo"))
        .unwrap_or_default();
    for part in ["method=CONNECT", "protocol=HTTP/2", "status=200"] {
        assert!(
            line.contains(part),
            "the WebSocket did not come as an HTTP/2 extended CONNECT ({part}): {line}\n{log}"
        );
    }
    drop(browser);
}

/// Socket.IO's Node client with its default transports (HTTP long-polling,
/// then the upgrade to a WebSocket) through the proxy to a Socket.IO
/// server. Catches: the upgrade not forwarded (the client stays on
/// polling and no `upgrade` event comes), and messages lost across the
/// switch of transports.
#[tokio::test]
async fn socket_io_upgrades_from_polling_to_websocket_through_the_proxy() {
    let mut server = Script::node("socketio_server.js", &[], &[]);
    let port: u16 = server.line_after("listening ").await.parse().expect("port");
    let proxy = spawn_proxy(([127, 0, 0, 1], port).into()).await;
    let url = format!("https://localhost:{}", proxy.addr.port());
    let ca = dev_cert_path().display().to_string();
    let mut client = Script::node(
        "socketio_client.js",
        &[&url],
        &[("NODE_EXTRA_CA_CERTS", ca)],
    );
    let line = client.line().await;
    let result = line
        .strip_prefix("result ")
        .unwrap_or_else(|| panic!("the client failed: {line}"));
    let result: serde_json::Value = serde_json::from_str(result).expect("JSON result");
    assert_eq!(result["first"], "polling", "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");
    assert_eq!(result["reply"]["text"], "hello over socket.io", "{result}");
    assert_eq!(result["reply"]["transport"], "websocket", "{result}");
    assert_eq!(server.line_after("upgraded ").await, "websocket");
}

// ---------------------------------------------------------------- the rules

/// Only `websocket` is forwarded as an upgrade: an `h2c` upgrade goes on
/// as a plain request, its `Upgrade` and what `Connection` names dropped.
/// Catches: forwarding every `Upgrade` once WebSockets are.
#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(
        b"GET /h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let mut seen = upstream.next().await;
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(!seen.request.has(name), "{name}: {:?}", seen.request.raw);
    }
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 200);
    assert_eq!(response.body_text(), "ok");
}

/// An upgrade the upstream refuses is relayed as its response, over both
/// protocols; a `101` with the wrong `Sec-WebSocket-Accept` is a 502.
/// Catches: a refusal turned into a 502 or a hang, and a broken handshake
/// passed on as if it were a WebSocket.
#[tokio::test]
async fn a_refused_upgrade_is_relayed_and_a_wrong_accept_key_is_a_502() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno";
    const WRONG_ACCEPT: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBhY2NlcHQga2V5\r\n\r\n";
    for (answer, status, expected) in [
        (FORBIDDEN, 403, "no"),
        (WRONG_ACCEPT, 502, "502 Bad Gateway\n"),
    ] {
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(handshake("/chat", "").as_bytes()).await;
        let mut seen = upstream.next().await;
        assert_eq!(seen.request.get("upgrade"), Some("websocket"));
        seen.write(answer).await;
        let response = conn.read_response(false).await;
        assert_eq!(response.head.status(), status, "{:?}", response.head.raw);
        assert_eq!(response.body_text(), expected);
        assert!(!response.head.has("upgrade"), "{:?}", response.head.raw);

        let mut h2 = h2_connection(proxy.addr).await;
        let (response, _send) = h2
            .send_request(extended_connect("/chat"), false)
            .expect("send");
        let mut seen = upstream.next().await;
        assert_eq!(seen.request.get("upgrade"), Some("websocket"));
        seen.write(answer).await;
        let response = tokio::time::timeout(WAIT_LIMIT, response)
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(response.status(), status);
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(data) = h2_data(&mut body).await {
            text.extend_from_slice(&data);
        }
        assert_eq!(String::from_utf8_lossy(&text), expected);
    }
}

/// An HTTP/2 extended CONNECT reaches an HTTP/1.1 upstream as the upgrade
/// GET with a fresh key and version 13 (and the browser's subprotocol and
/// origin); the client gets a 200 with the subprotocol, then bytes flow
/// both ways and the ends of the stream pass. Catches: the setting not
/// advertised, CONNECT refused or sent upstream as CONNECT, a key that is
/// not 16 bytes of base64, the HTTP/1.1-only accept field leaking into
/// the 200, and a half-close not passed on.
#[tokio::test]
async fn an_extended_connect_reaches_an_http1_upstream_as_an_upgrade() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut h2 = h2_connection(proxy.addr).await;
    let (response, mut send) = h2
        .send_request(extended_connect("/echo?room=1"), false)
        .expect("send");
    let socket = accept_and_echo(&mut upstream, "Sec-WebSocket-Protocol: chat\r\n").await;
    let request = &socket.request;
    assert_eq!(
        request.start_line, "GET /echo?room=1 HTTP/1.1",
        "{:?}",
        request.raw
    );
    assert_eq!(request.get("connection"), Some("upgrade"));
    assert_eq!(request.get("upgrade"), Some("websocket"));
    assert_eq!(request.get("sec-websocket-version"), Some("13"));
    assert_eq!(request.get("sec-websocket-protocol"), Some("chat"));
    assert_eq!(request.get("origin"), Some("https://localhost"));
    assert_eq!(request.get("host"), Some("localhost"));
    let key = request.get("sec-websocket-key").unwrap_or_default();
    assert!(
        key.len() == 24 && key.ends_with("==") && key != KEY,
        "not a fresh 16-byte key: {key:?}"
    );

    let response = tokio::time::timeout(WAIT_LIMIT, response)
        .await
        .expect("response in time")
        .expect("response");
    assert!(
        h2.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL not advertised"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"chat"[..])
    );
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let mut body = response.into_body();
    for message in ["first", "second message"] {
        send.send_data(Bytes::from(message), false)
            .expect("send data");
        let mut got = Vec::new();
        while got.len() < message.len() {
            got.extend_from_slice(&h2_data(&mut body).await.expect("echo"));
        }
        assert_eq!(got, message.as_bytes());
    }
    // The client ends its side: the upstream sees it, closes its own, and
    // the client's stream ends.
    send.send_data(Bytes::new(), true).expect("end stream");
    assert!(h2_data(&mut body).await.is_none(), "the stream should end");
    assert!(upstream_closed(socket, WAIT_LIMIT).await);
}

/// A WebSocket with no byte in either direction for
/// `--websocket-idle-timeout` is closed, on both sides; one that keeps
/// exchanging messages for longer is not. Catches: no idle timeout (the
/// silent socket stays open), a timeout counted from the start rather
/// than from the last byte, or one that counts only one direction.
#[tokio::test]
async fn an_idle_websocket_is_closed_and_a_busy_one_is_not() {
    const IDLE: Duration = Duration::from_secs(2);
    let mut upstream = RawUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.websocket_idle = IDLE;
    let proxy = spawn_proxy_with(config).await;

    let (mut busy, _, _busy_upstream) = h1_websocket(proxy.addr, &mut upstream, "/busy").await;
    let (mut idle, head, idle_upstream) = h1_websocket(proxy.addr, &mut upstream, "/idle").await;
    assert_eq!(head.get("upgrade"), Some("websocket"));
    assert_eq!(head.get("connection"), Some("upgrade"));
    assert_eq!(
        head.get("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let opened = Instant::now();

    // The busy one: a message every quarter of the timeout, for twice the
    // timeout (the pacing is the point of the test, not a wait for
    // something to happen).
    let busy_task = tokio::spawn(async move {
        for round in 0..8u8 {
            tokio::time::sleep(IDLE / 4).await;
            echo_round(&mut busy, &[b'a' + round; 3]).await;
        }
        busy
    });
    let (rest, closed) = idle.read_to_close(WAIT_LIMIT).await;
    let idle_for = opened.elapsed();
    assert!(closed && rest.is_empty(), "the idle WebSocket stayed open");
    assert!(idle_for >= IDLE, "closed after {idle_for:?}");
    assert!(upstream_closed(idle_upstream, WAIT_LIMIT).await);

    let mut busy = busy_task.await.expect("busy client");
    assert!(opened.elapsed() > IDLE * 2);
    echo_round(&mut busy, b"still open").await;
}

/// On shutdown, an open WebSocket (HTTP/1.1 and HTTP/2) keeps working
/// while the proxy drains, and is closed when `--drain-timeout` runs out;
/// the proxy then exits. Catches: WebSockets cut at once on shutdown, and
/// WebSockets that hold the proxy open past its drain timeout.
#[tokio::test]
async fn websockets_keep_working_while_draining_and_close_at_the_drain_timeout() {
    const DRAIN: Duration = Duration::from_secs(2);
    let mut upstream = RawUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.drain = DRAIN;
    let mut proxy = spawn_proxy_with(config).await;

    let (mut h1, _, h1_upstream) = h1_websocket(proxy.addr, &mut upstream, "/h1").await;
    let mut h2 = h2_connection(proxy.addr).await;
    let (response, mut h2_send) = h2
        .send_request(extended_connect("/h2"), false)
        .expect("send");
    let h2_upstream = accept_and_echo(&mut upstream, "").await;
    let response = tokio::time::timeout(WAIT_LIMIT, response)
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut h2_body = response.into_body();

    let shutdown_started = Instant::now();
    proxy.shutdown.cancel();
    until_refused(proxy.addr).await;
    // Draining: both still carry messages both ways.
    echo_round(&mut h1, b"while draining").await;
    h2_send
        .send_data(Bytes::from_static(b"h2 while draining"), false)
        .expect("send data");
    let mut got = Vec::new();
    while got.len() < 17 {
        got.extend_from_slice(&h2_data(&mut h2_body).await.expect("echo while draining"));
    }
    assert_eq!(got, b"h2 while draining");

    // Then the drain timeout closes them.
    let (_, closed) = h1.read_to_close(WAIT_LIMIT).await;
    assert!(closed, "the HTTP/1.1 WebSocket outlived the drain timeout");
    let closed_after = shutdown_started.elapsed();
    assert!(
        closed_after >= DRAIN - Duration::from_millis(200),
        "closed after {closed_after:?}, before the drain timeout"
    );
    let ended = tokio::time::timeout(WAIT_LIMIT, h2_body.data()).await;
    assert!(
        matches!(ended, Ok(None | Some(Err(_)))),
        "the HTTP/2 WebSocket outlived the drain timeout: {ended:?}"
    );
    assert!(upstream_closed(h1_upstream, WAIT_LIMIT).await);
    assert!(upstream_closed(h2_upstream, WAIT_LIMIT).await);
    let task = proxy.task.take().expect("proxy task");
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the proxy exits after its drain timeout")
        .expect("proxy task");
}
