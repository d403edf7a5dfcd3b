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
