use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use ssegate::cli::{CertArgs, Cli, Command};
use ssegate::config::LoadError;
use ssegate::logging::{self, LogFormat};
use ssegate::{CancellationToken, Config, StartError};

// mimalloc's per-thread free lists cost less CPU per request and handshake
// than glibc's malloc, and it keeps less memory per idle connection
// (measured with `cargo bench --bench compare`, see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages for its arenas, so resident
/// memory grows in 2 MiB steps: measured with the holding scenario of
/// `cargo bench --bench compare`, 2 MiB more at start and 2 KiB more per
/// idle stream at a thousand streams (11.6 instead of 9.4 KiB). A proxy's
/// working set is small and its connections many: it wants the memory more
/// than the fewer TLB misses.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours; it only sets a flag on this process's address space.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> ExitCode {
    // First, before the allocations that serving makes.
    #[cfg(target_os = "linux")]
    let huge_pages = disable_transparent_huge_pages();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    #[cfg(not(target_os = "linux"))]
    let huge_pages = Ok(());
    // Logging starts in each branch, for the rest of main: the guard
    // writes out the queued lines when it is dropped.
    let result = match &cli.command {
        None => {
            // Serving logs in the format its settings name, known once the
            // command line and the configuration file are read; they are
            // checked once logging has started, as checking logs (an
            // expired certificate).
            let argv: Vec<OsString> = std::env::args_os().collect();
            let parsed = match Config::parse(&argv) {
                Ok(parsed) => parsed,
                Err(LoadError::Usage(err)) => err.exit(),
                Err(err) => return failure(&err),
            };
            let _log_guard = start_logging(parsed.log_format(), huge_pages);
            serve(|shutdown| async move {
                let config = match parsed.check() {
                    Ok(config) => config,
                    Err(LoadError::Usage(err)) => err.exit(),
                    Err(err) => return Err(anyhow::Error::new(err)),
                };
                Ok(ssegate::run(config, shutdown).await?)
            })
        }
        // The other commands log text.
        Some(Command::Demo(args)) => {
            let _log_guard = start_logging(LogFormat::Text, huge_pages);
            serve(|shutdown| async move { Ok(ssegate::demo::run(args, shutdown).await?) })
        }
        Some(Command::Cert(args)) => {
            let _log_guard = start_logging(LogFormat::Text, huge_pages);
            write_dev_cert(args)
        }
        Some(Command::Check(args)) => {
            let _log_guard = start_logging(LogFormat::Text, huge_pages);
            return check(&args.config);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(&err),
    }
}

/// Starts logging in `format`; says (at debug) if transparent huge pages
/// could not be disabled.
fn start_logging(
    format: LogFormat,
    huge_pages: std::io::Result<()>,
) -> tracing_appender::non_blocking::WorkerGuard {
    let guard = logging::init(format);
    if let Err(err) = huge_pages {
        // Memory use is then only higher, not wrong.
        tracing::debug!(error = %err, "cannot disable transparent huge pages");
    }
    guard
}

/// Prints `err` as start-up errors are printed (a configuration file's
/// come one per line) and fails.
fn failure(err: &dyn std::fmt::Display) -> ExitCode {
    for line in err.to_string().lines() {
        eprintln!("ssegate: {line}");
    }
    ExitCode::FAILURE
}

/// Runs `serving` until it returns, with SIGINT and SIGTERM draining it
/// through the shutdown token it is given.
fn serve<F, Fut>(serving: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // This thread runs the accept loop and the first serving event loop; the
    // server starts the others (`--threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = ShutdownSignals::install()
            .map_err(|e| StartError::Config(format!("cannot install signal handlers: {e}")))?;
        tokio::spawn(cancel_on_signal(signals, shutdown.clone()));
        serving(shutdown).await
    })
}

/// `ssegate check --config PATH`: loads the configuration as a start
/// would (files read, keys matched to certificates, routes resolved).
fn check(path: &std::path::Path) -> ExitCode {
    let argv = [OsString::from("ssegate"), "--config".into(), path.into()];
    match Config::load(&argv) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            for line in err.to_string().lines() {
                println!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The first SIGINT or SIGTERM starts a graceful drain; a second exits at once.
async fn cancel_on_signal(mut signals: ShutdownSignals, shutdown: CancellationToken) {
    signals.recv().await;
    tracing::info!("signal received: draining (send it again to exit now)");
    shutdown.cancel();
    signals.recv().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// SIGINT and SIGTERM, installed before the listener opens so that an early
/// signal drains like any other instead of killing the process outright.
#[cfg(unix)]
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct ShutdownSignals;

#[cfg(not(unix))]
impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignals)
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn write_dev_cert(args: &CertArgs) -> anyhow::Result<()> {
    let (cert, key) = ssegate::tls::generate_self_signed(&args.names, args.days)?;
    std::fs::create_dir_all(&args.out_dir).map_err(|e| StartError::file(&args.out_dir, e))?;
    let stem = args
        .names
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let cert_path = args.out_dir.join(format!("{stem}.pem"));
    let key_path = args.out_dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert_path, cert).map_err(|e| StartError::file(&cert_path, e))?;
    write_private(&key_path, key.as_bytes()).map_err(|e| StartError::file(&key_path, e))?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}
