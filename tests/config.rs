//! The configuration file: routes by host and path prefix, `strip_prefix`,
//! per-route response headers, 404 for requests no route takes, `ssegate
//! check`, and reloads (file change, SIGHUP) that change upstream groups
//! while event streams flow, or fail and keep the old configuration.
//!
//! Every upstream is a `TestUpstream` that answers with its name and the
//! target it was asked for, so a response says where the request went.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::Version;
use ssegate::config::Config;

/// A target answering `/events` with an event stream the test feeds, and
/// anything else with "NAME TARGET".
async fn named(name: &'static str) -> TestUpstream {
    TestUpstream::builder()
        .on("/events", Reply::event_stream().header("x-target", name))
        .otherwise(Reply::with(move |request| {
            Reply::text(format!("{name} {}", request.target))
                .header("x-target", name)
                .header("server", "upstream/1.0")
        }))
        .start()
        .await
}

/// Writes `body` (after the certificate) as `ssegate.toml` in `dir`.
fn write_config(dir: &TempDir, body: &str) -> PathBuf {
    dir.write("ssegate.toml", format!("{}{body}", certificate_section()))
}

/// The configuration `ssegate --listen 127.0.0.1:0 --config FILE` loads.
fn load(file: &std::path::Path) -> Config {
    let argv: Vec<OsString> = ["ssegate", "--listen", "127.0.0.1:0", "--config"]
        .into_iter()
        .map(OsString::from)
        .chain([file.as_os_str().to_owned()])
        .collect();
    Config::load(&argv).unwrap_or_else(|err| panic!("config loads: {err}"))
}

/// GET `path` on `host`; returns the status, the body and the response.
async fn get_on(client: &mut Client, host: &str, path: &str) -> (u16, String, http::HeaderMap) {
    let version = client.version();
    let response = client
        .send(
            request(version, "GET", host, path)
                .body(empty_body())
                .unwrap(),
        )
        .await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = read_body(response.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// Fails if routes ignore hosts, take a shorter prefix over a longer one,
/// match prefixes inside a segment, forget to strip, or leave response
/// headers as the upstream sent them.
#[tokio::test]
async fn requests_take_the_route_of_their_host_and_longest_prefix() {
    let app = named("app").await;
    let live = named("live").await;
    let api = named("api").await;
    let dir = TempDir::new("routes");
    let file = write_config(
        &dir,
        &format!(
            r#"
[upstream.app]
targets = ["http://{app}"]

[upstream.live]
targets = ["http://{live}"]

[upstream.api]
targets = ["http://{api}"]

[[route]]
path = "/"
upstream = "app"
response_headers = {{ "X-Frame-Options" = "DENY", "Server" = "" }}

[[route]]
path = "/live/"
upstream = "live"
strip_prefix = true

[[route]]
host = "api.example.com"
path = "/"
upstream = "api"

[[route]]
host = "*.example.com"
path = "/live/"
upstream = "api"
"#,
            app = app.addr,
            live = live.addr,
            api = api.addr
        ),
    );
    let proxy = spawn_proxy_with(load(&file)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let cases = [
            ("localhost", "/", "app /"),
            ("localhost", "/live/x?y=1", "live /x?y=1"),
            // "/live/" covers what lies under it, not "/live" itself.
            ("localhost", "/live", "app /live"),
            ("localhost", "/lively", "app /lively"),
            ("api.example.com", "/anything", "api /anything"),
            ("API.example.com:443", "/live/x", "api /live/x"),
            ("www.example.com", "/live/x", "api /live/x"),
            ("www.example.com", "/x", "app /x"),
            // The wildcard does not cover the bare name.
            ("example.com", "/live/x", "live /x"),
        ];
        for (host, path, expected) in cases {
            let (status, body, _) = get_on(&mut client, host, path).await;
            assert_eq!(
                (status, body.as_str()),
                (200, expected),
                "{version:?} {host} {path}"
            );
        }
        let (_, _, headers) = get_on(&mut client, "localhost", "/page").await;
        assert_eq!(headers["x-frame-options"], "DENY", "{version:?}");
        assert!(
            !headers.contains_key("server"),
            "{version:?}: Server not removed"
        );
        let (_, _, headers) = get_on(&mut client, "localhost", "/live/page").await;
        assert!(
            headers.contains_key("server"),
            "{version:?}: another route's headers applied"
        );
    }
}

/// Fails if a request no route covers is sent to some upstream anyway.
#[tokio::test]
async fn a_request_no_route_takes_gets_404() {
    let mut api = named("api").await;
    let dir = TempDir::new("no-route");
    let file = write_config(
        &dir,
        &format!(
            "[upstream.api]\ntargets = [\"http://{}\"]\n\n[[route]]\npath = \"/api\"\nupstream = \"api\"\n",
            api.addr
        ),
    );
    let proxy = spawn_proxy_with(load(&file)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let (status, body, _) = get_on(&mut client, "localhost", "/api/v1").await;
        assert_eq!((status, body.as_str()), (200, "api /api/v1"));
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.get("/apis").await;
        assert_plain_error(response, 404).await;
    }
    api.next_request().await;
    api.next_request().await;
    assert!(
        api.saw_nothing_more(),
        "a request without a route reached the upstream"
    );
}

/// Fails if `check` stops at the first error, reports one without its
/// position, misses an unknown key, an undefined upstream or a key that
/// does not belong to its certificate, or fails a good file.
#[test]
fn check_prints_every_error_with_its_line_and_column() {
    let dir = TempDir::new("check");
    let good = write_config(
        &dir,
        "[upstream.app]\ntargets = [\"http://127.0.0.1:3000\", \"http://127.0.0.1:3001\"]\nhealth_check = \"/healthz\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\nmax_body = \"1m\"\n",
    );
    assert_eq!(ssegate_check(&good), (true, "ok\n".to_owned()));

    let bad = dir.write(
        "bad.toml",
        format!(
            "listen = \"nowhere\"\nbuffer_size = 3\n\n{}[upstream.app]\ntargets = [\"ftp://x\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\nsse_heartbeat = \"often\"\ncolour = \"red\"\n",
            certificate_section()
        ),
    );
    let (ok, printed) = ssegate_check(&bad);
    assert!(!ok, "{printed}");
    let lines: Vec<&str> = printed.lines().collect();
    let name = bad.display().to_string();
    let expected_starts = [
        format!("{name}:1:10: `listen`: invalid value"),
        format!("{name}:2:1: unknown key `buffer_size` at the top level"),
        format!("{name}:14:17: [[route]]: `sse_heartbeat`: \"often\" is not a duration"),
        format!("{name}:15:1: unknown key `colour` in [[route]]"),
    ];
    assert_eq!(lines.len(), expected_starts.len(), "{printed}");
    for (line, start) in lines.iter().zip(&expected_starts) {
        assert!(
            line.starts_with(start.as_str()),
            "{line:?} should start with {start:?}"
        );
    }

    // Once the keys are right, the sections are resolved: the bad target
    // and the undefined upstream are reported with their positions.
    let unresolved = dir.write(
        "unresolved.toml",
        format!(
            "{}[upstream.app]\ntargets = [\"ftp://x\"]\n\n[[route]]\npath = \"/\"\nupstream = \"ap\"\n",
            certificate_section()
        ),
    );
    let (ok, printed) = ssegate_check(&unresolved);
    let name = unresolved.display().to_string();
    assert!(!ok);
    assert!(
        printed.contains(&format!("{name}:6:12: invalid --upstream \"ftp://x\"")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "{name}:10:12: [[route]]: no upstream named \"ap\""
        )),
        "{printed}"
    );

    // A key that is not the certificate's.
    let (_, other_key) = ssegate::tls::generate_self_signed(&["other".into()], 1).unwrap();
    let other_key = dir.write("other-key.pem", other_key);
    let mismatched = dir.write(
        "mismatched.toml",
        format!(
            "[[certificate]]\ncert = {:?}\nkey = {:?}\n\n[upstream.app]\ntargets = [\"http://127.0.0.1:3000\"]\n",
            dev_cert_path().display().to_string(),
            other_key.display().to_string()
        ),
    );
    let (ok, printed) = ssegate_check(&mismatched);
    assert!(!ok);
    assert!(
        printed.starts_with(&format!("{}:2:8: ", mismatched.display())),
        "{printed}"
    );
    assert!(printed.contains("does not match"), "{printed}");
}

/// GETs `/who` until `pick` accepts the target that answers (a reload is
/// polled for, not slept on); returns that target's name.
async fn until_answered_by(client: &mut Client, pick: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let (_, body, headers) = get_on(client, "localhost", "/who").await;
        assert!(
            headers.contains_key("x-target"),
            "no target answered: {body}"
        );
        let name = headers["x-target"].to_str().unwrap().to_owned();
        if pick(&name) {
            return name;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered as expected; last: {name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails if a reload breaks a stream on a target it removes, keeps sending
/// new requests to that target, or does not use the added one.
#[tokio::test]
async fn a_reload_adds_and_removes_targets_while_streams_flow() {
    let mut a = named("a").await;
    let b = named("b").await;
    let c = named("c").await;
    let dir = TempDir::new("reload");
    let group = |targets: &[std::net::SocketAddr]| {
        let list: Vec<String> = targets.iter().map(|t| format!("\"http://{t}\"")).collect();
        format!(
            "[upstream.app]\ntargets = [{}]\nbalance = \"round-robin\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
            list.join(", ")
        )
    };
    let file = write_config(&dir, &group(&[a.addr, b.addr]));
    let proxy = spawn_proxy_with(load(&file)).await;

    // One stream on each protocol, both on target a.
    let mut streams = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        // Round-robin: within two tries one lands on a.
        let (client, response) = loop {
            let mut client = Client::connect(proxy.addr, version).await;
            let response = client.get("/events").await;
            if response.headers()["x-target"] == "a" {
                break (client, response);
            }
        };
        let upstream_stream = a.next_stream().await;
        let events = EventReader::new(response.into_body());
        streams.push((version, client, events, upstream_stream));
    }

    // a goes, c comes; the file is watched, so writing it is the reload.
    write_config(&dir, &group(&[b.addr, c.addr]));
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    until_answered_by(&mut client, |name| name == "c").await;
    for _ in 0..6 {
        let name = until_answered_by(&mut client, |_| true).await;
        assert_ne!(name, "a", "a request went to a removed target");
    }

    // The streams on the removed target go on.
    for (id, (version, _client, events, upstream_stream)) in streams.iter_mut().enumerate() {
        assert!(
            upstream_stream
                .write_event(id as u64 + 1, "tick", &["after reload"])
                .await
        );
        let event = events
            .next_event(WAIT_LIMIT)
            .await
            .expect("event after the reload");
        assert_eq!(
            event.text,
            event_text(id as u64 + 1, "tick", "after reload"),
            "{version:?}"
        );
    }
}

/// Fails if a broken file replaces a working configuration, or if SIGHUP
/// does not load a fixed one.
#[tokio::test]
async fn a_broken_reload_keeps_the_old_configuration_and_sighup_loads_a_fixed_one() {
    let first = named("first").await;
    let second = named("second").await;
    let dir = TempDir::new("sighup");
    let route = |addr: std::net::SocketAddr| {
        format!("[upstream.app]\ntargets = [\"http://{addr}\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n")
    };
    let file = write_config(&dir, &route(first.addr));
    let mut proxy = SsegateProcess::start(&["--config", file.to_str().unwrap()], WAIT_LIMIT).await;

    // Broken: an unknown key, and a route to a group that does not exist.
    write_config(
        &dir,
        &format!(
            "{}\n[[route]]\npath = \"/x\"\nupstream = \"nowhere\"\ntimeout = 1\n",
            route(second.addr)
        ),
    );
    sighup(proxy.pid());
    proxy
        .wait_for_log("still serving the previous configuration")
        .await;
    let log = proxy.log();
    assert!(log.contains("unknown key `timeout` in [[route]]"), "{log}");
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let (status, body, _) = get_on(&mut client, "localhost", "/x").await;
    assert_eq!((status, body.as_str()), (200, "first /x"));

    write_config(&dir, &route(second.addr));
    sighup(proxy.pid());
    proxy.wait_for_log("configuration reloaded").await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let (status, body, _) = get_on(&mut client, "localhost", "/x").await;
    assert_eq!((status, body.as_str()), (200, "second /x"));
}

fn sighup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success());
}

/// Fails if a route's own settings leak to other routes or are ignored:
/// `max_body`, `websocket = false` and `sse_shared` on one route each.
#[tokio::test]
async fn each_route_keeps_its_own_settings() {
    let mut app = named("app").await;
    app.on("/feed", Reply::event_stream());
    let dir = TempDir::new("route-settings");
    let file = write_config(
        &dir,
        &format!(
            r#"
[upstream.app]
targets = ["http://{app}"]

[[route]]
path = "/upload/"
max_body = "1k"

[[route]]
path = "/plain/"
websocket = false

[[route]]
path = "/live/"
strip_prefix = true
sse_shared = true

[[route]]
path = "/"
"#,
            app = app.addr
        ),
    );
    let proxy = spawn_proxy_with(load(&file)).await;
    let big = vec![b'x'; 2048];
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let post = |path: &str| {
            request(version, "POST", "localhost", path)
                .header("content-length", big.len())
                .body(full_body(big.clone()))
                .unwrap()
        };
        assert_plain_error(client.send(post("/upload/file")).await, 413).await;
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.send(post("/other")).await;
        assert_eq!(response.status(), 200, "{version:?}: max_body leaked");
        assert_eq!(app.next_request().await.body.len(), big.len());
    }

    // An upgrade on a route without WebSockets goes on as a plain GET.
    let upgrade = |path: &str| {
        request(Version::HTTP_11, "GET", "localhost", path)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(empty_body())
            .unwrap()
    };
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let response = client.send(upgrade("/plain/chat")).await;
    assert_eq!(response.status(), 200);
    let seen = app.next_request().await;
    assert_eq!(
        seen.header("upgrade"),
        None,
        "upgrade forwarded on a websocket = false route"
    );
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let response = client.send(upgrade("/chat")).await;
    assert_eq!(response.status(), 200, "the upstream's refusal is relayed");
    let seen = app.next_request().await;
    assert_eq!(seen.header("upgrade"), Some("websocket"));

    // Two subscribers of the shared route, one upstream request.
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.get("/live/feed").await;
        assert_eq!(response.status(), 200);
        readers.push(EventReader::new(response.into_body()));
        clients.push(client);
    }
    let stream = app.next_stream().await;
    assert_eq!(stream.path_and_query(), "/feed");
    assert!(stream.write_event(1, "tick", &["shared"]).await);
    for reader in &mut readers {
        let event = reader.next_event(WAIT_LIMIT).await.expect("shared event");
        assert_eq!(event.text, event_text(1, "tick", "shared"));
    }
    assert!(
        app.no_more_streams(),
        "the shared route opened a second upstream stream"
    );
}

/// Fails if a reload of the file leaves the old certificate in service.
#[tokio::test]
async fn a_reload_serves_the_certificate_the_file_now_names() {
    let app = named("app").await;
    let dir = TempDir::new("cert-reload");
    let names = ["localhost".to_owned()];
    let (first_cert, first_key) = ssegate::tls::generate_self_signed(&names, 30).unwrap();
    let (second_cert, second_key) = ssegate::tls::generate_self_signed(&names, 30).unwrap();
    let both = dir.write("both.pem", format!("{first_cert}{second_cert}"));
    let pair = |cert: &str, key: &str, name: &str| {
        let cert = dir.write(&format!("{name}.pem"), cert);
        let key = dir.write(&format!("{name}-key.pem"), key);
        format!(
            "[[certificate]]\ncert = {:?}\nkey = {:?}\n\n[upstream.app]\ntargets = [\"http://{}\"]\n",
            cert.display().to_string(),
            key.display().to_string(),
            app.addr
        )
    };
    let file = dir.write("ssegate.toml", pair(&first_cert, &first_key, "first"));
    let proxy = spawn_proxy_with(load(&file)).await;
    let served = || async {
        let tls = tls_connect_trusting(proxy.addr, &both).await;
        let leaf = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
        leaf.as_ref().to_vec()
    };
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    };
    assert_eq!(served().await, der(&first_cert));

    dir.write("ssegate.toml", pair(&second_cert, &second_key, "second"));
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while served().await != der(&second_cert) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS connection to `addr` trusting the certificates in `ca`.
async fn tls_connect_trusting(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = client_tls_config_trusting(ca, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Fails if the README's example configuration no longer loads (its
/// certificate paths replaced by the development certificate's).
#[test]
fn the_readme_example_configuration_checks_ok() {
    let dir = TempDir::new("readme");
    let file = dir.write("example.toml", readme_toml("Front a whole app"));
    assert_eq!(ssegate_check(&file), (true, "ok\n".to_owned()));
}
