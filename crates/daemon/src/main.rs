//! `blockvaultd`: the blockvault daemon.
//!
//! With no arguments it runs on the built-in default config (`config/blockvaultd.toml`): data in
//! `./blockvault-data`, listening on 127.0.0.1:8750. SIGTERM or Ctrl-C shut it down cleanly.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use blockvault_daemon::config::LogFormat;
use blockvault_daemon::server::Listeners;
use blockvault_daemon::{Config, Daemon};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "blockvaultd",
    version,
    about = "blockvault daemon: gRPC control plane for block volume backups"
)]
struct Args {
    /// Configuration file (TOML; see config/blockvaultd.toml). Default: the built-in config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config (port 0 picks a free port; the bound
    /// address is written to <data-dir>/listen.addr).
    #[arg(long, value_name = "ADDR", env = "BLOCKVAULTD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the Cinder REST listener, overriding the config (port 0 picks a free port;
    /// the bound address is written to <data-dir>/cinder.addr), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "BLOCKVAULTD_CINDER_LISTEN")]
    cinder_listen: Option<String>,
    /// Address of the Prometheus metrics listener, overriding the config (port 0 picks a free
    /// port; the bound address is written to <data-dir>/metrics.addr), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "BLOCKVAULTD_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Data directory, overriding the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    blockvault_engine::memory::tune_allocator();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockvaultd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => Config::load(p).map_err(anyhow::Error::msg)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(a) = &args.cinder_listen {
        (config.cinder.enabled, config.cinder.listen) =
            addr_or_off(a, "--cinder-listen", config.cinder.listen)?;
    }
    if let Some(a) = &args.metrics_listen {
        (config.metrics.enabled, config.metrics.listen) =
            addr_or_off(a, "--metrics-listen", config.metrics.listen)?;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .context("log filter")?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let daemon = tokio::task::spawn_blocking(move || Daemon::open(config)).await??;
        daemon.serve(listeners, shutdown_signal()).await
    })
}

/// `off` (disabled, `current` kept) or an address for a listener flag.
fn addr_or_off(value: &str, flag: &str, current: SocketAddr) -> Result<(bool, SocketAddr)> {
    if value == "off" {
        return Ok((false, current));
    }
    let a = value
        .parse()
        .with_context(|| format!("{flag} {value:?}: not ADDR:PORT or off"))?;
    Ok((true, a))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
