//! Outside tools (openssl, curl) run against the proxy.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::missing_tool;

/// Generous bound for one outside tool run (two cores, parallel tests).
pub const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// What one run of an outside tool printed.
pub struct ToolRun {
    pub success: bool,
    pub stdout: String,
    /// stdout and stderr together, for matching and for failure messages.
    pub all: String,
}

/// Runs `cmd` to completion with stdin closed and `TOOL_LIMIT`. The child is
/// killed if the limit passes (tokio's kill_on_drop is the guard). A missing
/// tool is a test failure that names the Debian package `package`.
pub async fn run_tool(cmd: Command, package: &str) -> ToolRun {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let command_line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let child = tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}", missing_tool(&program, package, &e)));
    let output = tokio::time::timeout(TOOL_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{command_line}` did not finish in {TOOL_LIMIT:?}"))
        .expect("collect tool output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ToolRun {
        success: output.status.success(),
        all: format!("{stdout}\n{stderr}"),
        stdout,
    }
}

/// `openssl` with `args` (Debian package `openssl`).
pub async fn openssl(args: &[&str]) -> ToolRun {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    run_tool(cmd, "openssl").await
}

/// curl for `https://localhost:{port}/...` (append options and the URL):
/// `localhost` resolves to 127.0.0.1, only `ca` is trusted, and the whole
/// transfer is bounded by `max_time_secs`.
pub fn curl_command(port: u16, ca: &Path, max_time_secs: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time_secs.to_string(), "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
    cmd
}

/// Where Chromium is; a test that needs it fails if it is not installed.
pub fn chromium_path() -> std::path::PathBuf {
    let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "Chromium not found at {candidates:?}: this test needs the Debian package `chromium`"
            )
        })
}
