//! Process set-up shared by every ferrokube binary: call [`init`] first thing in `main`.

/// Sends `tracing` logs to stderr (filtered by `RUST_LOG`, default `info` with raft-rs at
/// `warn`), and makes any panic abort the process: a component with a dead thread must
/// stop rather than keep answering while it no longer works (above all the store's Raft
/// thread).
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
}

/// Ends a command-line program that failed: one line on stderr (`error: <what>`), exit
/// status 1. Binaries print `{err:#}` of an `anyhow` error, which joins its context
/// chain into that one line.
pub fn exit_with(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

/// Runs a binary's async `main` on a multi-threaded runtime; an error ends the program
/// as [`exit_with`] does (with `{err:#}`, one line for an `anyhow` chain).
pub fn run<F, E>(main: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| exit_with(&format!("runtime: {e}")));
    if let Err(e) = rt.block_on(main) {
        exit_with(&format!("{e:#}"));
    }
}

/// Resolves on SIGTERM or SIGINT (a component's signal to stop).
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("terminated; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
}

/// This machine's host name (`localhost` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
