//! `unclip serve`: the HTTP server (feature `server`).

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::flags::{load, RuntimeArgs};

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 behind a load balancer).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Generation jobs waiting before new ones get 429.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_queue: usize,
    /// Compatible jobs run together in one batch.
    #[arg(long, default_value_t = 4)]
    pub(crate) max_batch: usize,
    /// Seconds a request may wait and run before it gets 504 and is cancelled.
    #[arg(long, default_value_t = 300)]
    pub(crate) request_timeout: u64,
    /// Require `Authorization: Bearer KEY` on /v1/* (or set UNCLIP_API_KEY).
    #[arg(long, env = "UNCLIP_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 20)]
    pub(crate) max_body_mib: usize,
    /// Seconds to finish accepted work after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub(crate) shutdown_grace: u64,
    /// Peak resident memory the server may reach, in MiB: measured at start (two one-step runs),
    /// then requests that would exceed it get 400 and batches stay within it. Default: no budget.
    #[arg(long)]
    pub(crate) memory_budget_mib: Option<u64>,
}

pub(crate) fn serve(args: ServeArgs, quiet: bool) -> Result<()> {
    let pipeline = std::sync::Arc::new(load(&args.runtime)?);
    let config = unclip::server::ServerConfig {
        addr: std::net::SocketAddr::new(args.host, args.port),
        max_queue: args.max_queue,
        max_batch: args.max_batch,
        request_timeout: std::time::Duration::from_secs(args.request_timeout),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_mib << 20,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        memory_budget: args.memory_budget_mib.map(|m| m.saturating_mul(1 << 20)),
        ..Default::default()
    };
    if config.max_queue == 0 || config.max_batch == 0 {
        bail!("--max-queue and --max-batch must be at least 1");
    }
    let mut config = config;
    if let Some(budget) = config.memory_budget {
        let model = unclip::server::memory::MemoryModel::calibrate(&pipeline)?;
        if !quiet {
            eprintln!(
                "memory budget {} MiB: {} MiB + {} MiB per image measured, at most {} images per run",
                budget >> 20,
                model.base_bytes >> 20,
                model.per_image_bytes >> 20,
                model.max_images(budget)
            );
        }
        config.memory_model = Some(model);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let local = listener.local_addr()?;
        if !quiet {
            eprintln!(
                "serving {} on http://{local} (sizes {:?}, queue {}, batch {}{})",
                pipeline.bundle().manifest.name,
                pipeline.sizes(),
                config.max_queue,
                config.max_batch,
                if config.api_key.is_some() {
                    ", API key required"
                } else {
                    ""
                }
            );
        }
        unclip::server::serve(
            pipeline,
            config,
            listener,
            unclip::server::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}
