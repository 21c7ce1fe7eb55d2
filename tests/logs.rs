//! `--log-format`: `json` writes every log line as one JSON object, and an
//! access line carries the request's route, upstream group, target,
//! status, protocol, whether it was an event stream and how it ended as
//! keys of their own; `text`, the default, stays readable. The `ssegate`
//! binary is started as users start it, and every line it writes to
//! stderr is read.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use http::Version;
use hyper::body::Incoming;
use serde_json::{json, Value};

/// A `[[certificate]]` section for `cert` and `key`.
fn certificate_section(cert: &Path, key: &Path) -> String {
    format!(
        "[[certificate]]\ncert = {:?}\nkey = {:?}\n\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// Writes `body` after the dev certificate's section as `ssegate.toml`.
fn write_config(dir: &TempDir, body: &str) -> PathBuf {
    let section = certificate_section(&dev_cert_path(), &dev_key_path());
    dir.write("ssegate.toml", format!("{section}{body}"))
}

/// Every line of `log` as a JSON object; fails on the first that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            Ok(other) => panic!("not a JSON object: {other}\n{log}"),
            Err(err) => panic!("not JSON ({err}): {line}\n--- log\n{log}"),
        })
        .collect()
}

/// The JSON access line for `path`, if it has been logged.
fn access_line(log: &str, path: &str) -> Option<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["target"] == "ssegate::access" && line["path"] == path)
}

/// Waits for the JSON access line for `path`.
async fn wait_for_access_line(proxy: &mut SsegateProcess, path: &str) -> Value {
    proxy
        .wait_for_log_that(&format!("a JSON access line for {path}"), |log| {
            access_line(log, path).is_some()
        })
        .await;
    access_line(&proxy.log(), path).expect("just logged")
}

/// Fails unless `line` has every key of `expected` with its value.
fn assert_has(line: &Value, expected: Value) {
    for (key, value) in expected.as_object().expect("an object") {
        assert_eq!(&line[key], value, "{key} in {line}");
    }
}

/// GET `path` on `host` over `client`; returns the response.
async fn get_on(client: &mut Client, host: &str, path: &str) -> http::Response<Incoming> {
    let version = client.version();
    client
        .send(
            request(version, "GET", host, path)
                .body(empty_body())
                .expect("valid request"),
        )
        .await
}

/// Two routes to one group whose first target is down: an ordinary
/// request, an event stream that the upstream ends, and a request no route
/// takes. Fails if a line is not JSON or lacks the common keys, if the
/// access fields are nested instead of top-level, or if an access line
/// names the wrong route, group, target (the one tried first instead of
/// the one that answered), status, protocol, kind or ending, or names a
/// route for a request that had none.
#[tokio::test]
async fn json_lines_carry_the_access_fields_of_each_request() {
    let mut upstream = TestUpstream::builder()
        .on("/live/events", Reply::event_stream())
        .otherwise(Reply::text("hello\n"))
        .start()
        .await;
    let dead = dead_upstream_addr().await;
    let live_url = format!("http://{}", upstream.addr);
    let dir = TempDir::new("json-logs");
    let file = write_config(
        &dir,
        &format!(
            "[upstream.app]\ntargets = [\"http://{dead}\", \"{live_url}\"]\nbalance = \"round-robin\"\n\n\
             [[route]]\npath = \"/live/\"\nupstream = \"app\"\n\n\
             [[route]]\nhost = \"api.example.com\"\npath = \"/\"\nupstream = \"app\"\n"
        ),
    );
    let mut proxy = SsegateProcess::start(
        &["--log-format", "json", "--config", file.to_str().unwrap()],
        WAIT_LIMIT,
    )
    .await;

    // An ordinary request over HTTP/1.1 (the dead target is tried first).
    let mut h1 = Client::connect(proxy.addr, Version::HTTP_11).await;
    let response = get_on(&mut h1, "api.example.com", "/hello").await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "hello\n");

    // An event stream over HTTP/2, ended by the upstream.
    let mut h2 = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = get_on(&mut h2, "localhost", "/live/events").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream_for("/live/events").await;
    assert!(stream.write_event(1, "tick", &["a"]).await);
    let mut events = EventReader::new(response.into_body());
    let event = events.next_event(WAIT_LIMIT).await.expect("an event");
    assert_eq!(event.text, event_text(1, "tick", "a"));
    stream.end().await;
    assert!(events.wait_end(WAIT_LIMIT).await, "the stream ends cleanly");

    // No route for this host and path.
    let response = get_on(&mut h1, "localhost", "/nothing").await;
    assert_eq!(response.status(), 404);
    read_body(response.into_body()).await;

    let ordinary = wait_for_access_line(&mut proxy, "/hello").await;
    let stream = wait_for_access_line(&mut proxy, "/live/events").await;
    let refused = wait_for_access_line(&mut proxy, "/nothing").await;
    sigterm(proxy.pid());
    proxy.wait_for_log("all connections closed").await;

    let log = proxy.log();
    let lines = json_lines(&log);
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
        assert!(line.get("fields").is_none(), "fields not flattened: {line}");
    }
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on https://"))),
        "{log}"
    );

    let common = json!({
        "level": "INFO",
        "target": "ssegate::access",
        "message": "request",
        "method": "GET",
    });
    assert_has(&ordinary, common.clone());
    assert_has(
        &ordinary,
        json!({
            "path": "/hello",
            "route": "api.example.com/",
            "upstream": "app",
            "target_url": live_url,
            "status": 200,
            "protocol": "HTTP/1.1",
            "sse": false,
            "outcome": "complete",
            "bytes": 6,
        }),
    );
    assert_has(&stream, common.clone());
    let event_bytes = format!("{}\n\n", event_text(1, "tick", "a")).len();
    assert_has(
        &stream,
        json!({
            "path": "/live/events",
            "route": "/live/",
            "upstream": "app",
            "target_url": live_url,
            "status": 200,
            "protocol": "HTTP/2",
            "sse": true,
            "outcome": "complete",
            "bytes": event_bytes,
        }),
    );
    assert_has(&refused, common);
    assert_has(
        &refused,
        json!({
            "path": "/nothing",
            "status": 404,
            "protocol": "HTTP/1.1",
            "sse": false,
            "outcome": "proxy error",
        }),
    );
    for key in ["route", "upstream", "target_url"] {
        assert!(
            refused.get(key).is_none(),
            "{key} without a route: {refused}"
        );
    }
    for line in [&ordinary, &stream, &refused] {
        assert!(line["duration_ms"].is_u64(), "{line}");
        assert!(line["peer"].is_string(), "{line}");
    }
}

/// A subscriber of a shared stream (one upstream request for all) that
/// leaves. Fails if its access line does not name the target whose
/// response the shared stream relays, or says the stream ended otherwise
/// than by the client leaving.
#[tokio::test]
async fn a_shared_stream_subscriber_names_the_target_of_the_stream() {
    let mut upstream = TestUpstream::builder()
        .on("/shared/*", Reply::event_stream())
        .start()
        .await;
    let live_url = format!("http://{}", upstream.addr);
    let dir = TempDir::new("json-logs-shared");
    let file = write_config(
        &dir,
        &format!(
            "[upstream.feeds]\ntargets = [\"{live_url}\"]\n\n\
             [[route]]\npath = \"/shared/\"\nupstream = \"feeds\"\nsse_shared = true\n"
        ),
    );
    let mut proxy = SsegateProcess::start(
        &["--log-format", "json", "--config", file.to_str().unwrap()],
        WAIT_LIMIT,
    )
    .await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = get_on(&mut client, "localhost", "/shared/feed").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream_for("/shared/feed").await;
    assert!(stream.write_event(1, "tick", &["a"]).await);
    let mut events = EventReader::new(response.into_body());
    assert!(events.next_event(WAIT_LIMIT).await.is_some());
    drop(events);

    let line = wait_for_access_line(&mut proxy, "/shared/feed").await;
    assert_has(
        &line,
        json!({
            "route": "/shared/",
            "upstream": "feeds",
            "target_url": live_url,
            "status": 200,
            "protocol": "HTTP/2",
            "sse": true,
            "outcome": "client closed",
        }),
    );
    json_lines(&proxy.log());
}

/// Fails if the default changed, or if text lines lost their readable
/// `key=value` form or the new route, group and target fields.
#[tokio::test]
async fn text_is_the_default_and_names_the_route_group_and_target() {
    let upstream = TestUpstream::builder()
        .otherwise(Reply::text("hello\n"))
        .start()
        .await;
    let target = format!("http://{}", upstream.addr);
    let cert = dev_cert_path();
    let key = dev_key_path();
    let mut proxy = SsegateProcess::start(
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--upstream",
            &target,
        ],
        WAIT_LIMIT,
    )
    .await;
    let response = get_once(proxy.addr, "/hello", Version::HTTP_11).await;
    assert_eq!(response.status(), 200);
    read_body(response.into_body()).await;
    proxy.wait_for_log("path=/hello").await;

    let log = proxy.log();
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line by default: {line}"
        );
    }
    let access = log
        .lines()
        .find(|line| line.contains("ssegate::access"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    for part in [
        "INFO ssegate::access: request ",
        " method=GET path=/hello protocol=HTTP/1.1 status=200 ",
        " bytes=6 sse=false outcome=\"complete\" ",
        // The one route of a configuration without [[route]]s.
        &format!(" route=/ upstream=default target_url={target}"),
    ] {
        assert!(access.contains(part), "{part:?} not in {access}");
    }
}

/// A self-signed certificate for localhost that expired yesterday.
fn expired_certificate(dir: &TempDir) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate params");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(30 * 86_400)).into();
    params.not_after = (now - Duration::from_secs(86_400)).into();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (
        dir.write("expired.pem", cert.pem()),
        dir.write("expired-key.pem", key.serialize_pem()),
    )
}

/// `log_format = "json"` in the file, nothing on the command line. Fails
/// if the file's key is ignored, or if lines logged while the
/// configuration is checked (an expired certificate's warning) come out
/// as text or not at all.
#[tokio::test]
async fn log_format_in_the_file_applies_from_the_first_line() {
    let upstream = TestUpstream::builder()
        .otherwise(Reply::text("hello\n"))
        .start()
        .await;
    let dir = TempDir::new("json-logs-file");
    let (cert, key) = expired_certificate(&dir);
    let file = dir.write(
        "ssegate.toml",
        format!(
            "log_format = \"json\"\n\n{}[upstream.app]\ntargets = [\"http://{}\"]\n",
            certificate_section(&cert, &key),
            upstream.addr
        ),
    );
    let proxy = SsegateProcess::start(&["--config", file.to_str().unwrap()], WAIT_LIMIT).await;
    let log = proxy.log();
    let lines = json_lines(&log);
    let expired = lines
        .iter()
        .find(|l| l["message"] == "certificate has expired")
        .unwrap_or_else(|| panic!("no warning for the expired certificate:\n{log}"));
    assert_eq!(expired["level"], "WARN", "{expired}");
    assert_eq!(expired["file"], cert.display().to_string(), "{expired}");
}

/// Fails if `SSEGATE_LOG_FORMAT` is not read.
#[test]
fn the_environment_can_choose_json() {
    let mut cmd = ssegate_command();
    cmd.env("SSEGATE_LOG_FORMAT", "json")
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(dev_cert_path())
        .arg("--key")
        .arg(dev_key_path())
        .args(["--upstream", "http://127.0.0.1:9"]);
    let mut proxy = Running::spawn(cmd);
    let line = proxy.wait_stderr_line("listening on https://", WAIT_LIMIT);
    let value: Value =
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
    assert_eq!(value["level"], "INFO", "{line}");
    assert_eq!(value["target"], "ssegate::server", "{line}");
}
