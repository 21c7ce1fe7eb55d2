//! The `ssegate` binary as a user runs it: help, version, start-up errors,
//! the listening line, SIGTERM, SSEGATE_* environment variables and `cert`.
//!
//! Every child process runs under a guard that kills it on Drop. Waiting is
//! done on events (a line on stderr, the end of the output), never on sleeps.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;

/// Generous: the machine has two cores and tests run in parallel.
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// Runs the binary to completion (bounded) and returns its status and output.
fn run_to_exit(cmd: Command) -> (ExitStatus, Vec<String>, Vec<String>) {
    let mut running = Running::spawn(cmd);
    let status = running.wait_exit(LIMIT);
    (
        status,
        std::mem::take(&mut running.stdout),
        std::mem::take(&mut running.stderr),
    )
}

/// Starts ssegate and asserts it refuses to start with exactly one stderr
/// line that contains every one of `expected`; returns that line.
fn assert_start_error(cmd: Command, expected: &[&str]) -> String {
    let (status, stdout, stderr) = run_to_exit(cmd);
    let all = stderr.join("\n");
    assert!(!status.success(), "expected failure, got {status}\n{all}");
    assert_eq!(status.code(), Some(1), "exit code\n{all}");
    assert!(
        !all.contains("panicked"),
        "a panic is not an error message:\n{all}"
    );
    assert!(stdout.is_empty(), "nothing on stdout: {stdout:?}");
    assert_eq!(stderr.len(), 1, "exactly one line on stderr, got:\n{all}");
    let line = &stderr[0];
    assert!(line.starts_with("ssegate: "), "{line}");
    for part in expected {
        assert!(line.contains(part), "{line:?} should mention {part:?}");
    }
    line.clone()
}

fn proxy_cmd(cert: &Path, key: &Path, upstream: &str) -> Command {
    proxy_cmd_on("127.0.0.1:0", cert, key, upstream)
}

fn proxy_cmd_on(listen: &str, cert: &Path, key: &Path, upstream: &str) -> Command {
    let mut cmd = ssegate_command();
    cmd.arg("--listen")
        .arg(listen)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--upstream")
        .arg(upstream);
    cmd
}

/// The test upstream on a runtime of its own (these tests have none),
/// answering every request with `body`.
fn tiny_upstream(body: &'static str) -> BackgroundUpstream {
    TestUpstream::builder()
        .otherwise(Reply::text(body))
        .start_in_background()
}

/// A TLS connection with rustls (ALPN http/1.1), trusting only `ca` and
/// checking the certificate for `localhost`.
fn tls_client(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = client_tls_config_trusting(ca, &[b"http/1.1"]);
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(addr).expect("connect to ssegate");
    tcp.set_read_timeout(Some(LIMIT)).expect("read timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// One HTTP/1.1 GET over TLS (see `tls_client`). Returns (status line, body).
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (String, String) {
    let mut tls = tls_client(addr, ca);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .expect("TLS handshake and request");
    tls.flush().expect("flush");
    let mut response = Vec::new();
    if let Err(err) = tls.read_to_end(&mut response) {
        // A peer that closes without close_notify still delivered its bytes.
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "reading the response: {err}"
        );
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {response:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

// ---------------------------------------------------------------- help, version

/// Splits `--help` output into one block per option, keyed by its long flag.
fn option_blocks(help: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if (2..=6).contains(&indent) && trimmed.starts_with('-') {
            let flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed)
                .to_owned();
            blocks.push((flag, String::new()));
        }
        if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks
}

#[test]
fn help_lists_every_flag_with_its_env_var_and_default() {
    let (status, stdout, stderr) = run_to_exit({
        let mut cmd = ssegate_command();
        cmd.arg("--help");
        cmd
    });
    assert!(status.success(), "{status}: {stderr:?}");
    let help = stdout.join("\n");
    let blocks = option_blocks(&help);
    let expected: [(&str, &str, Option<&str>); 17] = [
        ("--listen", "SSEGATE_LISTEN", Some("0.0.0.0:8443")),
        ("--cert", "SSEGATE_CERT", None),
        ("--key", "SSEGATE_KEY", None),
        ("--upstream", "SSEGATE_UPSTREAM", None),
        ("--balance", "SSEGATE_BALANCE", Some("least-conn")),
        ("--health-check", "SSEGATE_HEALTH_CHECK", None),
        ("--health-interval", "SSEGATE_HEALTH_INTERVAL", Some("5s")),
        ("--upstream-ca", "SSEGATE_UPSTREAM_CA", None),
        ("--request-timeout", "SSEGATE_REQUEST_TIMEOUT", Some("1m")),
        ("--send-timeout", "SSEGATE_SEND_TIMEOUT", Some("1m")),
        ("--max-header-size", "SSEGATE_MAX_HEADER_SIZE", Some("64k")),
        (
            "--keep-underscore-headers",
            "SSEGATE_KEEP_UNDERSCORE_HEADERS",
            None,
        ),
        ("--log-format", "SSEGATE_LOG_FORMAT", Some("text")),
        ("--sse-idle-timeout", "SSEGATE_SSE_IDLE_TIMEOUT", Some("1h")),
        ("--connect-timeout", "SSEGATE_CONNECT_TIMEOUT", Some("5s")),
        (
            "--header-read-timeout",
            "SSEGATE_HEADER_READ_TIMEOUT",
            Some("10s"),
        ),
        (
            "--tls-handshake-timeout",
            "SSEGATE_TLS_HANDSHAKE_TIMEOUT",
            Some("10s"),
        ),
    ];
    for (flag, env, default) in expected {
        let block = blocks
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| panic!("--help does not list {flag}:\n{help}"));
        assert!(
            block.contains(&format!("[env: {env}")),
            "{flag} should name {env}:\n{block}"
        );
        match default {
            Some(default) => assert!(
                block.contains(&format!("[default: {default}]")),
                "{flag} should show default {default}:\n{block}"
            ),
            None => assert!(
                !block.contains("[default:"),
                "{flag} is required and has no default:\n{block}"
            ),
        }
    }
    for required in ["--cert <PATH>", "--key <PATH>", "--upstream <URL>"] {
        let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap_or("");
        assert!(
            usage.contains(required),
            "usage should show {required} as required: {usage}"
        );
    }
    for command in ["demo", "cert", "check"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "--help should list the {command} subcommand:\n{help}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let (status, stdout, stderr) = run_to_exit({
        let mut cmd = ssegate_command();
        cmd.arg("--version");
        cmd
    });
    assert!(status.success(), "{status}: {stderr:?}");
    assert_eq!(
        stdout,
        vec![format!("ssegate {}", env!("CARGO_PKG_VERSION"))]
    );
}

#[test]
fn missing_required_flags_are_a_usage_error() {
    let (status, _stdout, stderr) = run_to_exit(ssegate_command());
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(2), "clap usage error exits 2:\n{all}");
    for flag in ["--cert", "--key", "--upstream"] {
        assert!(all.contains(flag), "should name missing {flag}:\n{all}");
    }
    assert!(!all.contains("panicked"), "{all}");
}

// ---------------------------------------------------------------- start-up errors

#[test]
fn missing_cert_file_is_one_clear_line() {
    let dir = TempDir::new("missing");
    let missing = dir.path("no-such-cert.pem");
    let line = assert_start_error(
        proxy_cmd(&missing, &dev_key_path(), "http://127.0.0.1:9"),
        &[&missing.display().to_string()],
    );
    assert!(
        line.to_lowercase().contains("no such file"),
        "reason should say the file does not exist: {line}"
    );
}

#[test]
fn missing_key_file_is_one_clear_line() {
    let dir = TempDir::new("missing-key");
    let missing = dir.path("no-such-key.pem");
    let line = assert_start_error(
        proxy_cmd(&dev_cert_path(), &missing, "http://127.0.0.1:9"),
        &[&missing.display().to_string()],
    );
    assert!(line.to_lowercase().contains("no such file"), "{line}");
}

#[test]
fn cert_file_that_is_not_pem_is_one_clear_line() {
    let dir = TempDir::new("notpem");
    let not_pem = dir.write("cert.pem", "this is not a certificate\n");
    assert_start_error(
        proxy_cmd(&not_pem, &dev_key_path(), "http://127.0.0.1:9"),
        &[&not_pem.display().to_string(), "CERTIFICATE"],
    );
}

#[test]
fn cert_with_corrupt_base64_is_one_clear_line() {
    let dir = TempDir::new("badb64");
    let corrupt = dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    );
    assert_start_error(
        proxy_cmd(&corrupt, &dev_key_path(), "http://127.0.0.1:9"),
        &[&corrupt.display().to_string(), "PEM"],
    );
}

#[test]
fn key_file_that_is_not_pem_is_one_clear_line() {
    let dir = TempDir::new("keynotpem");
    let not_pem = dir.write("key.pem", [0u8, 159, 146, 150, 1, 2, 3]);
    assert_start_error(
        proxy_cmd(&dev_cert_path(), &not_pem, "http://127.0.0.1:9"),
        &[&not_pem.display().to_string(), "PRIVATE KEY"],
    );
}

#[test]
fn cert_given_as_key_is_one_clear_line() {
    let cert = dev_cert_path();
    assert_start_error(
        proxy_cmd(&cert, &cert, "http://127.0.0.1:9"),
        &[&cert.display().to_string(), "PRIVATE KEY"],
    );
}

#[test]
fn key_given_as_cert_is_one_clear_line() {
    let key = dev_key_path();
    assert_start_error(
        proxy_cmd(&key, &key, "http://127.0.0.1:9"),
        &[&key.display().to_string(), "CERTIFICATE"],
    );
}

#[test]
fn key_that_does_not_match_the_cert_is_one_clear_line() {
    let dir = TempDir::new("mismatch");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let other_key = dir.write("other-key.pem", other.serialize_pem());
    let cert = dev_cert_path();
    assert_start_error(
        proxy_cmd(&cert, &other_key, "http://127.0.0.1:9"),
        &[
            &other_key.display().to_string(),
            "does not match",
            &cert.display().to_string(),
        ],
    );
}

#[test]
fn unsupported_upstream_scheme_is_one_clear_line() {
    assert_start_error(
        proxy_cmd(&dev_cert_path(), &dev_key_path(), "ftp://127.0.0.1:9"),
        &[
            "--upstream",
            "ftp://127.0.0.1:9",
            "http://",
            "https://",
            "unix:",
        ],
    );
}

#[test]
fn unix_upstream_without_a_path_is_one_clear_line() {
    assert_start_error(
        proxy_cmd(&dev_cert_path(), &dev_key_path(), "unix:"),
        &["--upstream", "unix:/path"],
    );
}

#[test]
fn missing_upstream_ca_file_is_one_clear_line() {
    let mut cmd = proxy_cmd(&dev_cert_path(), &dev_key_path(), "https://127.0.0.1:9");
    cmd.args(["--upstream-ca", "/nonexistent"]);
    let line = assert_start_error(cmd, &["/nonexistent"]);
    assert!(line.to_lowercase().contains("no such file"), "{line}");
}

#[test]
fn upstream_ca_that_is_not_pem_is_one_clear_line() {
    let dir = TempDir::new("upstream-ca");
    let not_pem = dir.write("ca.pem", "not a certificate\n");
    let mut cmd = proxy_cmd(&dev_cert_path(), &dev_key_path(), "https://127.0.0.1:9");
    cmd.arg("--upstream-ca").arg(&not_pem);
    assert_start_error(cmd, &[&not_pem.display().to_string(), "CERTIFICATE"]);
}

#[test]
fn upstream_without_scheme_is_one_clear_line() {
    assert_start_error(
        proxy_cmd(&dev_cert_path(), &dev_key_path(), "127.0.0.1:9"),
        &["--upstream", "127.0.0.1:9", "http://host:port"],
    );
}

#[test]
fn upstream_targets_with_different_base_paths_are_one_clear_line() {
    let mut cmd = proxy_cmd(&dev_cert_path(), &dev_key_path(), "http://127.0.0.1:9/a");
    cmd.args(["--upstream", "http://127.0.0.1:10/b"]);
    assert_start_error(cmd, &["--upstream", "http://127.0.0.1:10/b", "base path"]);
}

#[test]
fn health_check_path_must_be_a_path() {
    let mut cmd = proxy_cmd(&dev_cert_path(), &dev_key_path(), "http://127.0.0.1:9");
    cmd.args(["--health-check", "healthz"]);
    assert_start_error(cmd, &["--health-check", "healthz"]);
}

#[test]
fn upstream_with_query_is_one_clear_line() {
    assert_start_error(
        proxy_cmd(&dev_cert_path(), &dev_key_path(), "http://127.0.0.1:9/?a=1"),
        &["--upstream", "query"],
    );
}

#[test]
fn unparseable_listen_address_is_a_usage_error() {
    let cmd = proxy_cmd_on(
        "localhost:not-a-port",
        &dev_cert_path(),
        &dev_key_path(),
        "http://127.0.0.1:9",
    );
    let (status, _stdout, stderr) = run_to_exit(cmd);
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(2), "{all}");
    assert!(
        all.contains("--listen") && all.contains("localhost:not-a-port"),
        "{all}"
    );
    assert!(!all.contains("multiple times"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn unknown_log_format_is_a_usage_error() {
    let mut cmd = proxy_cmd(&dev_cert_path(), &dev_key_path(), "http://127.0.0.1:9");
    cmd.args(["--log-format", "yaml"]);
    let (status, _stdout, stderr) = run_to_exit(cmd);
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(2), "{all}");
    for part in ["--log-format", "'yaml'", "[possible values: text, json]"] {
        assert!(all.contains(part), "{part:?} not in:\n{all}");
    }
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn listen_address_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cmd = proxy_cmd_on(
        &addr,
        &dev_cert_path(),
        &dev_key_path(),
        "http://127.0.0.1:9",
    );
    assert_start_error(cmd, &["cannot listen", &addr]);
    drop(taken);
}

// ---------------------------------------------------------------- serving

#[test]
fn listens_on_the_real_port_serves_tls_and_exits_0_on_sigterm() {
    let mut upstream = tiny_upstream("hello from upstream\n");
    let mut proxy = Running::spawn(proxy_cmd(
        &dev_cert_path(),
        &dev_key_path(),
        &format!("http://{}", upstream.addr),
    ));
    let line = proxy.wait_stderr_line("listening on https://", LIMIT);
    let addr = listening_addr(&line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(addr.port(), 0, "must print the bound port: {line}");

    let (status, body) = https_get(addr, &dev_cert_path(), "/hello?x=1");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "hello from upstream\n");
    let seen = upstream.next_request();
    assert_eq!(seen.start_line(), "GET /hello?x=1 HTTP/1.1");
    // Log lines are buffered, but the access line must come out while the
    // proxy runs on, not when it exits.
    let access = proxy.wait_stderr_line("path=/hello", LIMIT);
    assert!(access.contains("status=200"), "{access}");

    sigterm(proxy.pid());
    let exit = proxy.wait_exit(LIMIT);
    assert!(
        exit.success(),
        "SIGTERM should end with status 0, got {exit}\n{}",
        proxy.transcript()
    );
    let all = proxy.stderr.join("\n");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn sigterm_with_an_idle_keep_alive_connection_exits_0_promptly() {
    let upstream = tiny_upstream("kept alive\n");
    let mut proxy = Running::spawn(proxy_cmd(
        &dev_cert_path(),
        &dev_key_path(),
        &format!("http://{}", upstream.addr),
    ));
    let addr = listening_addr(&proxy.wait_stderr_line("listening on https://", LIMIT));

    // A browser-like client: one request, then the connection stays open.
    let mut tls = tls_client(addr, &dev_cert_path());
    write!(tls, "GET /idle HTTP/1.1\r\nhost: localhost\r\n\r\n").expect("request");
    tls.flush().expect("flush");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.ends_with(b"kept alive\n") {
        let n = tls.read(&mut buf).expect("read response");
        assert_ne!(n, 0, "connection closed before the response was complete");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));

    let signalled = Instant::now();
    sigterm(proxy.pid());
    let exit = proxy.wait_exit(LIMIT);
    assert!(exit.success(), "{exit}\n{}", proxy.transcript());
    // The drain timeout is 30 s; an idle connection must not hold it up.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit took {:?} with an idle keep-alive connection",
        signalled.elapsed()
    );
    // The client sees the connection end (EOF or close_notify), not a hang.
    match tls.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

#[test]
fn flags_come_from_ssegate_env_vars() {
    let dir = TempDir::new("env");
    let (cert_pem, key_pem) =
        ssegate::tls::generate_self_signed(&["localhost".to_owned()], 2).expect("generate cert");
    let cert = dir.write("env-cert.pem", cert_pem);
    let key = dir.write("env-key.pem", key_pem);
    let mut upstream = tiny_upstream("configured by environment\n");

    let mut cmd = ssegate_command();
    cmd.env("SSEGATE_LISTEN", "127.0.0.1:0")
        .env("SSEGATE_CERT", &cert)
        .env("SSEGATE_KEY", &key)
        .env("SSEGATE_UPSTREAM", format!("http://{}/base", upstream.addr));
    let mut proxy = Running::spawn(cmd);
    let line = proxy.wait_stderr_line("listening on https://", LIMIT);
    let addr = listening_addr(&line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "SSEGATE_LISTEN: {line}");
    assert_ne!(addr.port(), 0, "{line}");

    // Trusting only the env-named certificate proves SSEGATE_CERT/KEY were used.
    let (status, body) = https_get(addr, &cert, "/events");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "configured by environment\n");
    let seen = upstream.next_request();
    assert_eq!(
        seen.start_line(),
        "GET /base/events HTTP/1.1",
        "SSEGATE_UPSTREAM base path"
    );

    sigterm(proxy.pid());
    let exit = proxy.wait_exit(LIMIT);
    assert!(exit.success(), "{exit}\n{}", proxy.transcript());
}

#[test]
fn command_line_flags_override_env_vars() {
    let upstream = tiny_upstream("flag wins\n");
    let mut cmd = proxy_cmd(
        &dev_cert_path(),
        &dev_key_path(),
        &format!("http://{}", upstream.addr),
    );
    cmd.env("SSEGATE_UPSTREAM", "https://ignored.invalid:1")
        .env("SSEGATE_CERT", "/nonexistent/cert.pem")
        .env("SSEGATE_LISTEN", "256.0.0.1:1");
    let mut proxy = Running::spawn(cmd);
    let addr = listening_addr(&proxy.wait_stderr_line("listening on https://", LIMIT));
    let (status, body) = https_get(addr, &dev_cert_path(), "/");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "flag wins\n");
}

#[test]
fn cert_subcommand_writes_a_pair_that_ssegate_accepts() {
    let dir = TempDir::new("certcmd");
    let out = dir.path("nested/certs");
    let (status, stdout, stderr) = run_to_exit({
        let mut cmd = ssegate_command();
        cmd.arg("cert").arg("--out-dir").arg(&out);
        cmd
    });
    assert!(status.success(), "{status}: {stderr:?}");
    let cert = out.join("localhost.pem");
    let key = out.join("localhost-key.pem");
    let said = stdout.join("\n");
    assert!(
        said.contains(&cert.display().to_string()) && said.contains(&key.display().to_string()),
        "should say what it wrote: {said}"
    );
    let cert_text = std::fs::read_to_string(&cert).expect("cert written");
    let key_text = std::fs::read_to_string(&key).expect("key written");
    assert!(
        cert_text.starts_with("-----BEGIN CERTIFICATE-----"),
        "{cert_text}"
    );
    assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----"));

    let upstream = tiny_upstream("fresh cert\n");
    let mut proxy = Running::spawn(proxy_cmd(&cert, &key, &format!("http://{}", upstream.addr)));
    let addr = listening_addr(&proxy.wait_stderr_line("listening on https://", LIMIT));
    // The new certificate is valid for localhost: rustls verifies it as the root.
    let (status, body) = https_get(addr, &cert, "/");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "fresh cert\n");
    sigterm(proxy.pid());
    assert!(proxy.wait_exit(LIMIT).success(), "{}", proxy.transcript());
}

#[test]
fn cert_subcommand_names_files_after_the_first_name() {
    let dir = TempDir::new("certname");
    let (status, _stdout, stderr) = run_to_exit({
        let mut cmd = ssegate_command();
        cmd.args(["cert", "--name", "example.test", "--name", "10.0.0.5"])
            .args(["--days", "1", "--out-dir"])
            .arg(dir.root());
        cmd
    });
    assert!(status.success(), "{status}: {stderr:?}");
    let cert = dir.path("example.test.pem");
    let key = dir.path("example.test-key.pem");
    let pair = ssegate::tls::CertPair {
        cert: cert.clone(),
        key: key.clone(),
    };
    ssegate::tls::load_certified_key(&pair).expect("written pair loads and matches");
}
