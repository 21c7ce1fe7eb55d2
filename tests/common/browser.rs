//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: NUL-terminated JSON on file descriptors 3
//! and 4), as `tests/demo.rs` does it: a page is opened in a target, a
//! promise evaluated in it reports back, and a screenshot can be taken
//! once the page shows what the test waits for (`--screenshot` and
//! `--dump-dom` run at the load event, before an EventSource has data).
//! Needs the Debian package `chromium`; a missing browser fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use super::{chromium_path, TempDir};

/// How every test starts Chromium: headless, no sandbox (root), no
/// background traffic (the machine has no network), the test's self-signed
/// certificates accepted, and `localhost` on loopback.
pub const HEADLESS_FLAGS: [&str; 13] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--ignore-certificate-errors",
    "--host-resolver-rules=MAP localhost 127.0.0.1",
];

/// Kills a browser started with `process_group(0)` and its whole group
/// (zygote and renderers included), and reaps it.
pub fn kill_browser_group(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A headless Chromium driven over the DevTools pipe. The browser runs in
/// its own process group, which is killed on Drop (renderers included).
pub struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: Receiver<String>,
    /// Messages received while waiting for something else (events).
    backlog: Vec<String>,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    next_id: u64,
    _profile: TempDir,
}

impl Browser {
    pub fn launch() -> Self {
        let chromium = chromium_path();
        let profile = TempDir::new("chromium-profile");
        // Chromium reads DevTools commands on fd 3 and writes replies on fd 4.
        // std has no fd mapping, so a shell moves our stdin/stdout pipes there.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(&chromium)
            .args(HEADLESS_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.root().display()))
            .env_remove("DISPLAY")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start /bin/sh to launch chromium");
        let to_browser = child.stdin.take().expect("stdin piped");
        let mut from = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, from_browser) = mpsc::channel();
        thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..=end);
                    if tx.send(message).is_err() {
                        return;
                    }
                }
            }
        });
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr_tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut tail = tail.lock().expect("lock");
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
        });
        Browser {
            child,
            to_browser,
            from_browser,
            backlog: Vec::new(),
            stderr_tail,
            next_id: 1,
            _profile: profile,
        }
    }

    pub fn diagnostics(&self) -> String {
        let tail = self.stderr_tail.lock().expect("lock").join("\n");
        format!("--- chromium stderr (last lines)\n{tail}")
    }

    pub fn send(&mut self, method: &str, params: &str, session: Option<&str>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let session = session
            .map(|s| format!(r#","sessionId":{}"#, json_string(s)))
            .unwrap_or_default();
        let message = format!(r#"{{"id":{id},"method":"{method}","params":{params}{session}}}"#);
        let written = self
            .to_browser
            .write_all(message.as_bytes())
            .and_then(|()| self.to_browser.write_all(b"\0"))
            .and_then(|()| self.to_browser.flush());
        if let Err(e) = written {
            panic!(
                "cannot talk to chromium ({e}); did it start?\n{}",
                self.diagnostics()
            );
        }
        id
    }

    fn receive(&mut self, deadline: Instant, waiting_for: &str) -> String {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.from_browser.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "timed out waiting for {waiting_for}\n{}",
                    self.diagnostics()
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "chromium closed the DevTools pipe while we waited for {waiting_for}\n{}",
                self.diagnostics()
            ),
        }
    }

    /// Sends a command and waits for its reply; panics on a protocol error.
    pub fn call(
        &mut self,
        method: &str,
        params: &str,
        session: Option<&str>,
        deadline: Instant,
    ) -> String {
        let id = self.send(method, params, session);
        let prefix = format!(r#"{{"id":{id},"#);
        loop {
            let message = self.receive(deadline, method);
            if message.starts_with(&prefix) {
                if message.contains(r#""error":{"#) && !message.contains(r#""result":"#) {
                    panic!("{method} failed: {message}");
                }
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// Waits for an event `method` (for `session`, if given).
    pub fn wait_event(&mut self, method: &str, session: Option<&str>, deadline: Instant) -> String {
        let wanted = format!(r#""method":"{method}""#);
        let matches = |m: &String| {
            m.contains(&wanted)
                && session.is_none_or(|s| m.contains(&format!(r#""sessionId":{}"#, json_string(s))))
        };
        if let Some(pos) = self.backlog.iter().position(matches) {
            return self.backlog.remove(pos);
        }
        loop {
            let message = self.receive(deadline, method);
            if matches(&message) {
                return message;
            }
            self.backlog.push(message);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_browser_group(&mut self.child);
        }
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first string value of `"key":"..."` in a JSON message (unescaped).
pub fn json_field(message: &str, key: &str) -> Option<String> {
    let start = message.find(&format!(r#""{key}":""#))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = message[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

impl Browser {
    /// Opens `url` in a new page of `width` x `height` CSS pixels and
    /// waits for its load event; returns the page's session id.
    pub fn open_page(&mut self, url: &str, width: u32, height: u32, deadline: Instant) -> String {
        let created = self.call(
            "Target.createTarget",
            r#"{"url":"about:blank"}"#,
            None,
            deadline,
        );
        let target =
            json_field(&created, "targetId").unwrap_or_else(|| panic!("no targetId in {created}"));
        let attached = self.call(
            "Target.attachToTarget",
            &format!(r#"{{"targetId":{},"flatten":true}}"#, json_string(&target)),
            None,
            deadline,
        );
        let session = json_field(&attached, "sessionId")
            .unwrap_or_else(|| panic!("no sessionId in {attached}"));
        let page = Some(session.as_str());
        self.call(
            "Emulation.setDeviceMetricsOverride",
            &format!(
                r#"{{"width":{width},"height":{height},"deviceScaleFactor":1,"mobile":false}}"#
            ),
            page,
            deadline,
        );
        self.call("Page.enable", "{}", page, deadline);
        let navigated = self.call(
            "Page.navigate",
            &format!(r#"{{"url":{}}}"#, json_string(url)),
            page,
            deadline,
        );
        assert!(
            json_field(&navigated, "errorText").is_none(),
            "navigation failed: {navigated}"
        );
        self.wait_event("Page.loadEventFired", page, deadline);
        session
    }

    /// Evaluates `expression` (a promise is awaited) in the page and
    /// returns its value as a string.
    pub fn evaluate(&mut self, session: &str, expression: &str, deadline: Instant) -> String {
        let evaluated = self.call(
            "Runtime.evaluate",
            &format!(
                r#"{{"expression":{},"awaitPromise":true,"returnByValue":true}}"#,
                json_string(expression)
            ),
            Some(session),
            deadline,
        );
        json_field(&evaluated, "value").unwrap_or_else(|| panic!("no value in {evaluated}"))
    }

    /// A PNG of the page as it is now.
    pub fn screenshot(&mut self, session: &str, deadline: Instant) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call(
            "Page.captureScreenshot",
            r#"{"format":"png","captureBeyondViewport":true}"#,
            Some(session),
            deadline,
        );
        let data = json_field(&shot, "data").unwrap_or_else(|| panic!("no data in {shot}"));
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG")
    }
}
