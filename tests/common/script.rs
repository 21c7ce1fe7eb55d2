//! Scripts the tests run as child processes: Node.js programs of
//! `tests/express` (with its npm packages) and Python programs, each read
//! line by line from its stdout. Killed on Drop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{missing_tool, output_lines, repo_path};

/// How long a script may take for its next line: Node or Python starting
/// up on two busy cores.
pub const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// A script whose stdout lines arrive on a channel; killed on drop.
pub struct Script {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Script {
    /// `node tests/express/<script> <args>`, with `env` added.
    pub fn node(script: &str, args: &[&str], env: &[(&str, String)]) -> Script {
        let dir = repo_path("tests/express");
        assert!(
            dir.join("node_modules/express").is_dir(),
            "tests/express has no node_modules: run `npm ci --prefix tests/express` (.ci/run does)"
        );
        let mut command = Command::new("node");
        command.arg(dir.join(script)).args(args).current_dir(&dir);
        for (name, value) in env {
            command.env(name, value);
        }
        Script::start(command, "node", "nodejs")
    }

    /// `node <dir>/<script>` run in `dir` (a path in the repository with
    /// its own `package.json`, such as an example), with `env` added.
    pub fn node_in(dir: &str, script: &str, env: &[(&str, String)]) -> Script {
        let path = repo_path(dir);
        assert!(
            path.join("node_modules").is_dir(),
            "{dir} has no node_modules: run `npm ci --prefix {dir}` (.ci/run does)"
        );
        let mut command = Command::new("node");
        command.arg(path.join(script)).current_dir(&path);
        for (name, value) in env {
            command.env(name, value);
        }
        Script::start(command, "node", "nodejs")
    }

    /// `python3 <script> <args>`.
    pub fn python(script: &Path, args: &[&str]) -> Script {
        let mut command = Command::new("python3");
        // Unbuffered: each line arrives when it is printed.
        command.arg("-u").arg(script).args(args);
        Script::start(command, "python3", "python3")
    }

    fn start(mut command: Command, program: &str, package: &str) -> Script {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{}", missing_tool(program, package, &e)));
        let lines = output_lines(child.stdout.take().expect("stdout piped"));
        Script {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line; fails the test after `SCRIPT_LIMIT`.
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(SCRIPT_LIMIT, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                line
            }
            other => panic!(
                "no line from the script within {SCRIPT_LIMIT:?} ({other:?}); so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// The rest of the next line that starts with `prefix`; other lines
    /// are skipped.
    pub async fn line_after(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Every line so far, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen.join("\n")
    }

    /// SIGKILL, and reaped.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}
