//! `ssegate demo` as a person uses it: start it, open the printed URL with
//! curl and with a real browser (headless Chromium) and watch events arrive.
//!
//! Needs curl (Debian package `curl`) and Chromium (Debian package
//! `chromium`, /usr/bin/chromium); a test whose tool is missing fails.
//!
//! Chromium is driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: NUL-terminated JSON on file descriptors 3 and
//! 4), not with `--dump-dom`: `--dump-dom` serialises the page right after its
//! load event, before any event has arrived, and `--virtual-time-budget`
//! never expires while the EventSource request is open (virtual time stops
//! while a fetch is pending), so it hangs. Over the pipe the test evaluates a
//! promise in the page that resolves as soon as three events are listed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// Generous: two cores, tests in parallel, a browser starting up.
const LIMIT: Duration = Duration::from_secs(30);
/// The whole browser test, start to finish.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the demo

/// `ssegate demo --listen 127.0.0.1:0`, running until dropped.
struct Demo {
    process: Running,
    port: u16,
}

impl Demo {
    fn start() -> Self {
        let mut cmd = ssegate_command();
        cmd.args(["demo", "--listen", "127.0.0.1:0"]);
        let mut process = Running::spawn(cmd);
        let deadline = Instant::now() + LIMIT;
        let port = loop {
            let line = process.next_stdout_line(deadline).unwrap_or_else(|| {
                panic!(
                    "the demo printed no URL within {LIMIT:?}\n{}",
                    process.transcript()
                )
            });
            if let Some(rest) = line.split("open https://localhost:").nth(1) {
                let port = rest.split('/').next().unwrap_or_default();
                break port
                    .parse::<u16>()
                    .unwrap_or_else(|e| panic!("bad port in {line:?}: {e}"));
            }
        };
        assert_ne!(port, 0, "the demo must print the port it bound");
        Demo { process, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// curl for `path` on the demo, with `extra` options.
    fn curl(&self, extra: &[&str], path: &str) -> Command {
        let mut cmd = curl_command(self.port, &dev_cert_path(), 30);
        cmd.args(extra).arg(self.url(path));
        cmd
    }
}

/// One SSE event as curl printed it.
#[derive(Debug, Default)]
struct Event {
    id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
    retry: Option<u64>,
}

/// Reads blank-line separated events from curl's output until `count` have
/// arrived (the leading `retry:` block counts as one).
fn read_events(curl: &mut Running, count: usize, limit: Duration) -> Vec<Event> {
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    let mut current = Event::default();
    let mut in_event = false;
    while events.len() < count {
        let line = curl.next_stdout_line(deadline).unwrap_or_else(|| {
            panic!(
                "stream ended or stalled after {} events: {events:?}\n{}",
                events.len(),
                curl.transcript()
            )
        });
        if line.is_empty() {
            if in_event {
                events.push(std::mem::take(&mut current));
                in_event = false;
            }
            continue;
        }
        in_event = true;
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => current.id = Some(value.parse().expect("numeric id")),
            "event" => current.event = Some(value.to_owned()),
            "data" => current.data.push(value.to_owned()),
            "retry" => current.retry = Some(value.parse().expect("numeric retry")),
            other => panic!("unexpected field {other:?} in line {line:?}"),
        }
    }
    events
}

fn assert_date_events(events: &[Event], first_id: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.id, Some(first_id + i as u64), "{events:?}");
        assert_eq!(event.event.as_deref(), Some("date"), "{events:?}");
        assert_eq!(event.data.len(), 1, "{events:?}");
        let date = humantime::parse_rfc3339(&event.data[0])
            .unwrap_or_else(|e| panic!("data {:?} is not a date: {e}", event.data[0]));
        let age = SystemTime::now()
            .duration_since(date)
            .unwrap_or(Duration::ZERO);
        assert!(
            age < Duration::from_secs(60),
            "stale date {:?}",
            event.data[0]
        );
    }
}

#[test]
fn demo_serves_the_eventsource_page_over_https() {
    let mut demo = Demo::start();
    let mut curl = Running::spawn_tool(
        demo.curl(
            &["-w", "\n%{http_version} %{response_code} %{content_type}"],
            "/",
        ),
        "curl",
    );
    let status = curl.wait_exit(LIMIT);
    let page = curl.stdout.join("\n");
    assert!(
        status.success(),
        "curl failed: {status}\n{}",
        curl.transcript()
    );
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(
        page.contains(r#"new EventSource("/stream/date")"#),
        "the page opens an EventSource on /stream/date:\n{page}"
    );
    assert!(page.contains(r#"<ol id="events">"#), "{page}");
    let last = curl.stdout.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("2 200 text/html"),
        "curl negotiates h2 by default; got {last:?}"
    );

    // The demo stops cleanly on SIGTERM.
    sigterm(demo.process.pid());
    let exit = demo.process.wait_exit(LIMIT);
    assert!(exit.success(), "{exit}\n{}", demo.process.transcript());
}

#[test]
fn demo_stream_sends_retry_then_dated_events() {
    let demo = Demo::start();
    let mut curl = Running::spawn_tool(demo.curl(&["-N"], "/stream/date"), "curl");
    let started = Instant::now();
    let events = read_events(&mut curl, 4, LIMIT);
    assert_eq!(
        events[0].retry,
        Some(3000),
        "retry: comes first: {events:?}"
    );
    assert!(events[0].id.is_none() && events[0].data.is_empty());
    assert_date_events(&events[1..], 1);
    // One per second, streamed: three events cannot take much longer than 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "events were held back: {:?}",
        started.elapsed()
    );
}

#[test]
fn demo_stream_resumes_after_last_event_id() {
    let demo = Demo::start();
    let mut curl = Running::spawn_tool(
        demo.curl(&["-N", "-H", "Last-Event-ID: 41"], "/stream/date"),
        "curl",
    );
    let events = read_events(&mut curl, 3, LIMIT);
    assert_eq!(events[0].retry, Some(3000), "{events:?}");
    assert_date_events(&events[1..], 42);
}

// ---------------------------------------------------------------- Chromium

/// Evaluated in the page: resolves once the page lists three events (or
/// after 20 s) with "why|status|protocol|ids newest first|newest text".
const WATCH_EVENTS_JS: &str = r#"
new Promise((resolve) => {
  const list = document.getElementById('events');
  const report = (why) => {
    const items = Array.from(list.querySelectorAll('li.event'));
    const nav = performance.getEntriesByType('navigation')[0];
    resolve([
      why,
      document.getElementById('status').textContent,
      nav ? nav.nextHopProtocol : '',
      items.map((li) => li.dataset.id).join(','),
      items.length ? items[0].textContent : '',
    ].join('|'));
  };
  const enough = () => list.querySelectorAll('li.event').length >= 3;
  if (enough()) { report('ok'); return; }
  new MutationObserver((_, observer) => {
    if (enough()) { observer.disconnect(); report('ok'); }
  }).observe(list, { childList: true });
  setTimeout(() => report('timeout'), 20000);
})
"#;

#[test]
fn demo_page_shows_events_in_headless_chromium() {
    let deadline = Instant::now() + BROWSER_LIMIT;
    let demo = Demo::start();
    let mut browser = Browser::launch();

    let session = browser.open_page(&demo.url("/"), 1280, 800, deadline);
    let value = browser.evaluate(&session, WATCH_EVENTS_JS, deadline);
    let parts: Vec<&str> = value.split('|').collect();
    let [why, status, protocol, ids, newest] = parts[..] else {
        panic!("unexpected report {value:?}");
    };
    assert_eq!(
        why,
        "ok",
        "fewer than 3 events within 20 s: {value:?}\n{}",
        browser.diagnostics()
    );
    assert_eq!(
        status, "open",
        "EventSource state shown on the page: {value:?}"
    );
    assert_eq!(
        protocol, "h2",
        "the browser should reach the demo over HTTP/2: {value:?}"
    );
    // The page prepends, so the list is newest first.
    let mut ids: Vec<u64> = ids
        .split(',')
        .map(|id| {
            id.parse()
                .unwrap_or_else(|_| panic!("bad id {id:?} in {value:?}"))
        })
        .collect();
    ids.reverse();
    assert!(ids.len() >= 3, "{value:?}");
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids should increase one by one in arrival order: {ids:?}"
    );
    let newest_id = ids[ids.len() - 1];
    let prefix = format!("id {newest_id}: ");
    let date = newest
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("newest item {newest:?} should start with {prefix:?}"));
    humantime::parse_rfc3339(date).unwrap_or_else(|e| panic!("{date:?} is not a date: {e}"));

    browser.send("Browser.close", "{}", None);
    drop(browser);
    drop(demo);
}
