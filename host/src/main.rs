//! The `kiln` binary.

use anyhow::Context;
use clap::Parser;
use kiln::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Verify(args) => {
                if kiln::verify::run(args).await? {
                    Ok(())
                } else {
                    // The report is printed; the exit status says it failed.
                    std::process::exit(1);
                }
            }
        }
    });
    // A compile on the blocking pool (a large plugin loading in the
    // background) is abandoned rather than waited for: the compile cache
    // only ever renames complete files into place.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    result
}

/// How long the exit waits for blocking work still running.
const SHUTDOWN_BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

async fn serve(args: kiln::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.host_config(kiln::default_plugins_dir());
    let host = kiln::server::start(config).await?;
    // Tests and scripts read this line to find the port.
    println!("kiln listening on http://{}", host.addr);
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight commands");
    host.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
