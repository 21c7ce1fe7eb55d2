//! Child processes: the real `ssegate` binary and outside tools, run under
//! guards that kill them on Drop. Waiting is done on their output (a line,
//! the end of a stream), never on sleeps.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The `ssegate` binary cargo built for these tests.
pub const SSEGATE_BIN: &str = env!("CARGO_BIN_EXE_ssegate");

/// The binary with a clean environment: no SSEGATE_* and no RUST_LOG from
/// the caller, so every test sees the defaults it expects.
pub fn ssegate_command() -> Command {
    let mut cmd = Command::new(SSEGATE_BIN);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SSEGATE_") || name == "RUST_LOG" {
            cmd.env_remove(&*name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The failure message for an outside tool that cannot be started: a
/// missing tool fails the test and names the Debian package to install.
pub fn missing_tool(program: &str, package: &str, err: &std::io::Error) -> String {
    format!("cannot run `{program}` ({err}): this test needs the Debian package `{package}`")
}

/// Parses `listening on https://127.0.0.1:PORT` out of ssegate's log line
/// (text or JSON).
pub fn listening_addr(line: &str) -> SocketAddr {
    let rest = line
        .split("listening on https://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    let addr = &rest[..end];
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
}

/// Sends SIGTERM to `pid` with kill(1).
pub fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

#[derive(Debug)]
enum Output {
    Stdout(String),
    Stderr(String),
    Closed,
}

/// A running child whose stdout and stderr are read line by line by two
/// threads. Killed (and reaped) on Drop if it is still running.
pub struct Running {
    child: Child,
    rx: Receiver<Output>,
    open_streams: usize,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// How many stdout lines `next_stdout_line` has handed out.
    stdout_taken: usize,
}

impl Running {
    /// Starts `cmd` with stdin closed; failing to start it fails the test.
    pub fn spawn(cmd: Command) -> Self {
        Self::start(cmd, None)
    }

    /// Like `spawn`, for an outside tool from the Debian package `package`.
    pub fn spawn_tool(cmd: Command, package: &str) -> Self {
        Self::start(cmd, Some(package))
    }

    fn start(mut cmd: Command, package: Option<&str>) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            let program = cmd.get_program();
            match package {
                Some(package) => {
                    panic!("{}", missing_tool(&program.to_string_lossy(), package, &e))
                }
                None => panic!("cannot start {program:?}: {e}"),
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        let tx2 = tx.clone();
        thread::spawn(move || forward_lines(out, tx, Output::Stdout));
        thread::spawn(move || forward_lines(err, tx2, Output::Stderr));
        Running {
            child,
            rx,
            open_streams: 2,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_taken: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Receives one line (or end of stream) before `deadline`; false on timeout.
    fn pump(&mut self, deadline: Instant) -> bool {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(Output::Stdout(line)) => self.stdout.push(line),
            Ok(Output::Stderr(line)) => self.stderr.push(line),
            Ok(Output::Closed) => self.open_streams -= 1,
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
        }
        true
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_stderr_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            if let Some(line) = self.stderr[seen..].iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            seen = self.stderr.len();
            if self.open_streams == 0 || !self.pump(deadline) {
                panic!(
                    "no stderr line containing {needle:?} within {limit:?}\n{}",
                    self.transcript()
                );
            }
        }
    }

    /// The next stdout line, waiting for it until `deadline`; None at the
    /// end of the output or on timeout.
    pub fn next_stdout_line(&mut self, deadline: Instant) -> Option<String> {
        while self.stdout_taken == self.stdout.len() {
            if self.open_streams == 0 || !self.pump(deadline) {
                return None;
            }
        }
        self.stdout_taken += 1;
        Some(self.stdout[self.stdout_taken - 1].clone())
    }

    /// Reads until both streams are closed, then reaps the child.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while self.open_streams > 0 {
            if !self.pump(deadline) {
                panic!(
                    "process did not exit within {limit:?}\n{}",
                    self.transcript()
                );
            }
        }
        self.child.wait().expect("wait for child")
    }

    /// Everything it printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines(
    stream: impl Read,
    tx: mpsc::Sender<Output>,
    wrap: fn(String) -> Output,
) -> Option<()> {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        tx.send(wrap(line)).ok()?;
    }
    tx.send(Output::Closed).ok()
}

/// The lines of a child's output pipe, as they come, on a channel that
/// ends with the output.
pub fn output_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// The `ssegate` binary on `127.0.0.1:0` under tokio, killed on Drop, with
/// everything it writes to stderr collected so tests can wait for a line.
pub struct SsegateProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    log: tokio::sync::watch::Receiver<String>,
    limit: Duration,
}

impl SsegateProcess {
    /// Starts `ssegate --listen 127.0.0.1:0 <args>` and waits up to `limit`
    /// for "listening on https://127.0.0.1:PORT".
    pub async fn start(args: &[&str], limit: Duration) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::from(ssegate_command())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ssegate");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, log) = tokio::sync::watch::channel(String::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        let mut process = SsegateProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            limit,
        };
        const MARK: &str = "listening on https://";
        process.wait_for_log(MARK).await;
        let text = process.log();
        process.addr = listening_addr(text.lines().find(|l| l.contains(MARK)).unwrap_or_default());
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_none()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.borrow().clone()
    }

    /// Waits up to the start-up limit for a log line containing `needle`.
    pub async fn wait_for_log(&mut self, needle: &str) {
        self.wait_for_log_that(&format!("{needle:?}"), |log| log.contains(needle))
            .await;
    }

    /// Waits up to the start-up limit until `done` holds for everything
    /// logged so far; `what` names the wait in the failure message.
    pub async fn wait_for_log_that(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let found = tokio::time::timeout(self.limit, self.log.wait_for(|l| done(l)))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            found,
            "ssegate never logged {what} within {:?}:\n{}",
            self.limit,
            self.log()
        );
    }
}

/// Runs `ssegate check --config FILE`: its exit success and what it printed.
pub fn ssegate_check(file: &std::path::Path) -> (bool, String) {
    let output = ssegate_command()
        .args(["check", "--config"])
        .arg(file)
        .output()
        .expect("run ssegate check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
