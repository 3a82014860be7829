//! `tenantscope-collector`: wiring only. `serve` (the default) runs the receivers, the API and
//! the background tasks; `report` prints one tenant's SLA report; `hash-token` prints the
//! SHA-256 to put in `[[auth.tokens]]`; `check-config` validates a config file.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use tenantscope_collector::{
    api, auth,
    config::Config,
    forward::{ForwardMetrics, Forwarder},
    gauges,
    metrics::CollectorMetrics,
    promql::PromqlSource,
    remote_write::{RemoteWriteMetrics, Shipper},
    report::{self, Format},
    server::{self, Ingestor},
    sli::SliSource,
    store::Store,
    tls,
};

#[derive(Parser)]
#[command(
    name = "tenantscope-collector",
    version,
    about = "Tenantscope collector: OTLP ingest, per-tenant SLI rollups, SLOs and SLA reports"
)]
struct Cli {
    /// TOML config file; without one, the built-in defaults (see the example file)
    #[arg(long, short = 'c', env = "TENANTSCOPE_COLLECTOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log filter, e.g. "info" or "info,tenantscope_collector=debug" [file: log.level]
    #[arg(long, env = "TENANTSCOPE_LOG", global = true)]
    log_level: Option<String>,
    /// SQLite store path [file: storage.path]
    #[arg(long, env = "TENANTSCOPE_COLLECTOR_STORE", global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP, keep the SLI rollups, serve the API (the default)
    Serve {
        /// OTLP/gRPC listen address [file: server.otlp_grpc]
        #[arg(long, env = "TENANTSCOPE_COLLECTOR_OTLP_GRPC")]
        otlp_grpc: Option<std::net::SocketAddr>,
        /// OTLP/HTTP listen address [file: server.otlp_http]
        #[arg(long, env = "TENANTSCOPE_COLLECTOR_OTLP_HTTP")]
        otlp_http: Option<std::net::SocketAddr>,
        /// API and /metrics listen address [file: server.api]
        #[arg(long, env = "TENANTSCOPE_COLLECTOR_API")]
        api: Option<std::net::SocketAddr>,
    },
    /// Print a tenant's SLA report
    Report {
        /// The tenant; without it, a one-line summary of every tenant with traffic
        #[arg(long)]
        tenant: Option<String>,
        /// `YYYY-MM` (a UTC calendar month), `rolling` (the last 30 days) or `current`
        #[arg(long, default_value = "current")]
        period: String,
        /// html, json or csv
        #[arg(long, default_value = "json")]
        format: Format,
        /// Write to this file instead of stdout
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Compute from a Prometheus-compatible engine (its base URL) instead of the store
        /// [file: promql.url]
        #[arg(long)]
        promql: Option<String>,
        /// The time the report is computed at (Unix seconds); default now
        #[arg(long, hide = true)]
        now: Option<i64>,
    },
    /// Read a token on stdin and print the sha256 for [[auth.tokens]]
    HashToken,
    /// Validate the config file and print the effective values
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantscope-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref()).map_err(anyhow::Error::msg)?;
    // OTEL_EXPORTER_OTLP_* variables configure the trace forwarder, as for any OTLP exporter.
    cfg.forward.apply_otel_env(|k| std::env::var(k).ok());
    if let Some(p) = &cli.store {
        cfg.storage.path = p.clone();
    }
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(Command::Serve {
        otlp_grpc,
        otlp_http,
        api,
    }) = &cli.command
    {
        cfg.server.otlp_grpc = otlp_grpc.unwrap_or(cfg.server.otlp_grpc);
        cfg.server.otlp_http = otlp_http.unwrap_or(cfg.server.otlp_http);
        cfg.server.api = api.unwrap_or(cfg.server.api);
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Command::HashToken) => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            let token = token.trim_end();
            anyhow::ensure!(!token.is_empty(), "no token on stdin");
            println!("{}", auth::hex(&auth::sha256(token)));
            Ok(())
        }
        Some(Command::CheckConfig) => {
            let cfg = load(&cli)?;
            println!("{cfg:#?}");
            Ok(())
        }
        Some(Command::Report {
            tenant,
            period,
            format,
            output,
            promql,
            now,
        }) => {
            let cfg = load(&cli)?;
            let now = now.unwrap_or_else(unix_now);
            report_cmd(
                &cfg,
                tenant.as_deref(),
                period,
                *format,
                output.as_deref(),
                promql.clone(),
                now,
            )
        }
        None | Some(Command::Serve { .. }) => {
            let cfg = load(&cli)?;
            init_logging(&cfg);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cfg))
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn report_cmd(
    cfg: &Config,
    tenant: Option<&str>,
    period: &str,
    format: Format,
    output: Option<&std::path::Path>,
    promql: Option<String>,
    now: i64,
) -> Result<()> {
    let source: Box<dyn SliSource> = match promql
        .or_else(|| (!cfg.promql.url.trim().is_empty()).then(|| cfg.promql.url.clone()))
    {
        Some(url) => {
            let mut p = cfg.promql.clone();
            p.url = url;
            Box::new(PromqlSource::new(&p)?)
        }
        None => {
            anyhow::ensure!(
                cfg.storage.path.exists(),
                "no store at {} (is the collector running with this config? --store sets the path)",
                cfg.storage.path.display()
            );
            Box::new(Store::open(&cfg.storage.path, cfg.storage.options())?)
        }
    };
    let text = match tenant {
        Some(t) => {
            // Progress on stderr when a person watches; reports of long periods read many rows.
            let tty = std::io::stderr().is_terminal();
            let mut progress = |p: report::Progress| {
                if tty {
                    eprint!("\r{p}   ");
                }
            };
            let r = report::build(&*source, &cfg.objectives, t, period, now, &mut progress)?;
            if tty {
                eprintln!();
            }
            report::render(&r, format)
        }
        None => summary(&*source, cfg, period, now)?,
    };
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// One line per tenant with traffic in the period: the one-line view of the current month.
fn summary(source: &dyn SliSource, cfg: &Config, period: &str, now: i64) -> Result<String> {
    let kind = cfg.objectives.objective_for("").period;
    let p = tenantscope_collector::sla::resolve_period(period, kind, now)?;
    let tenants = source.tenants(p.start, p.end.min(now + 60))?;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.3}%", v * 100.0));
    let mut out = format!(
        "{:<24} {:>12} {:>10} {:>13} {:>10} {:>13} {:>11}\n",
        "tenant", "requests", "errors", "availability", "objective", "latency", "budget left"
    );
    for t in tenants {
        let r = report::build(source, &cfg.objectives, &t, period, now, &mut |_| {})?;
        out.push_str(&format!(
            "{:<24} {:>12} {:>10} {:>13} {:>10} {:>13} {:>11}\n",
            t,
            r.totals.requests,
            r.totals.errors,
            pct(r.availability.attainment),
            pct(Some(r.availability.target)),
            pct(r.latency.attainment),
            format!("{:.1}%", r.availability.remaining * 100.0),
        ));
    }
    if out.lines().count() == 1 {
        out.push_str(&format!("(no traffic in {})\n", p.label));
    }
    Ok(out)
}

async fn serve(cfg: Config) -> Result<()> {
    let store = Arc::new(
        Store::open(&cfg.storage.path, cfg.storage.options())
            .context("opening the store (storage.path)")?,
    );
    let tokens = auth::Tokens::load(&cfg.auth).map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(CollectorMetrics::new());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let objectives = Arc::new(cfg.objectives.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let thresholds = objectives.clone();
    let mut ingestor = Ingestor::new(
        store.clone(),
        metrics.clone(),
        tokens.clone(),
        Box::new(move |t| thresholds.objective_for(t).latency_threshold() * 1000.0),
        cfg.ingest.max_cumulative_series,
        cfg.ingest.max_future_skew.as_secs() as i64,
    )
    .with_rate_limit(cfg.server.agent_rate_limit, cfg.server.agent_rate_burst);
    let mut tasks = tokio::task::JoinSet::new();
    // The forwarder's task drains its queue and ends once the ingestor (its last sender) is
    // dropped at shutdown.
    let mut forward_task = None;
    if cfg.forward.enabled() {
        let fm = ForwardMetrics::default();
        fm.register(&mut registry);
        let (forwarder, task) = Forwarder::start(&cfg.forward, fm)?;
        ingestor.trace_sink = Some(Box::new(move |req| {
            forwarder.offer(req.clone());
        }));
        forward_task = Some(task);
    }
    if cfg.remote_write.enabled() {
        let rm = RemoteWriteMetrics::default();
        rm.register(&mut registry);
        let shipper = Shipper::new(cfg.remote_write.clone(), store.clone(), rm)?;
        tasks.spawn(shipper.run(stopped()));
    }
    let ingestor = Arc::new(ingestor);

    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => None,
    };
    let bind = |addr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} ({what})"))
    };
    let grpc = bind(cfg.server.otlp_grpc, "server.otlp_grpc").await?;
    let http = bind(cfg.server.otlp_http, "server.otlp_http").await?;
    let api_listener = bind(cfg.server.api, "server.api").await?;
    tracing::info!(
        otlp_grpc = %grpc.local_addr()?, otlp_http = %http.local_addr()?, api = %api_listener.local_addr()?,
        store = %cfg.storage.path.display(), tls = tls.is_some(), auth = tokens.enabled(),
        "collector listening"
    );

    let mut grpc_server = tonic::transport::Server::builder();
    if let (Some(c), Some(k)) = (&cfg.server.tls_cert, &cfg.server.tls_key) {
        let identity = tonic::transport::Identity::from_pem(std::fs::read(c)?, std::fs::read(k)?);
        grpc_server = grpc_server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("gRPC TLS")?;
    }
    let routes = server::grpc_routes(ingestor.clone(), cfg.server.max_request_bytes);
    let incoming = tonic::transport::server::TcpIncoming::from(grpc);
    let grpc_stop = stopped();
    tasks.spawn(async move {
        if let Err(e) = grpc_server
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, grpc_stop)
            .await
        {
            tracing::error!("OTLP/gRPC server failed: {e}");
        }
    });
    let http_app = server::http_router(ingestor.clone(), cfg.server.max_request_bytes);
    let (t, s) = (tls.clone(), stopped());
    tasks.spawn(async move {
        if let Err(e) = tls::serve(http, http_app, t, s).await {
            tracing::error!("OTLP/HTTP server failed: {e}");
        }
    });
    let api_app = api::router(api::ApiState {
        store: store.clone(),
        objectives: objectives.clone(),
        tokens: Arc::new(tokens),
        registry: Arc::new(registry),
    });
    let (t, s) = (tls.clone(), stopped());
    tasks.spawn(async move {
        if let Err(e) = tls::serve(api_listener, api_app, t, s).await {
            tracing::error!("API server failed: {e}");
        }
    });

    // Store maintenance and SLO gauges: blocking work, off the async threads.
    tasks.spawn(every(cfg.storage.maintenance_interval, stopped(), {
        let (store, metrics) = (store.clone(), metrics.clone());
        move || {
            let now = unix_now();
            match store.maintain(now) {
                Ok(m) if m != Default::default() => tracing::info!(?m, "store maintenance"),
                Ok(_) => {}
                Err(e) => {
                    metrics.maintenance_failures.inc();
                    tracing::error!("store maintenance failed: {e:#}");
                }
            }
        }
    }));
    tasks.spawn(every(cfg.ingest.slo_refresh_interval, stopped(), {
        let (store, metrics, objectives) = (store.clone(), metrics.clone(), objectives.clone());
        let (max, path) = (cfg.ingest.max_slo_tenants, cfg.storage.path.clone());
        move || {
            if let Err(e) = gauges::refresh(&*store, &objectives, &metrics, unix_now(), max) {
                tracing::warn!("SLO gauges not refreshed: {e:#}");
            }
            if let Ok((rows, evidence, _)) = store.counts() {
                metrics.store_rows.set(rows as i64);
                metrics.store_evidence.set(evidence as i64);
            }
            metrics.store_bytes.set(store_bytes(&path) as i64);
        }
    }));

    shutdown_signal().await;
    tracing::info!("stopping: draining connections and flushing");
    let _ = stop_tx.send(true);
    // Everything in flight finishes; a stuck peer does not hold the process forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
        drop(ingestor);
        if let Some(task) = forward_task {
            let _ = task.await;
        }
    })
    .await;
    Ok(())
}

/// Runs `work` on a blocking thread every `period` until `stop`.
async fn every(
    period: Duration,
    stop: impl Future<Output = ()>,
    work: impl Fn() + Send + Sync + Clone + 'static,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let w = work.clone();
        let _ = tokio::task::spawn_blocking(w).await;
    }
}

fn store_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum()
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
