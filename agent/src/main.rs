//! `tenantscope-agent`: wiring only. See the library crate for the logic.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser as _;
use tenantscope_agent::{
    agent::{Agent, Health},
    aggregate::http::SpanSetup,
    config::{Cli, Config, LogFormat},
    otlp, server, sli_export,
    spans::SpanOptions,
    telemetry::{SnapshotCollector, Telemetry},
    workload::k8s,
};
use tokio::sync::watch;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tenantscope-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantscope-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let record = cli.record_http.map(|path| (path, cli.record_limit));
    match rt.block_on(run(cfg, record)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tenantscope-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, record: Option<(std::path::PathBuf, u64)>) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let listener = server::bind(cfg.server.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (server.listen / --listen)",
            cfg.server.listen
        )
    })?;
    let telemetry = Telemetry::default();
    let collector = Arc::new(SnapshotCollector::default());
    let mut registry = telemetry.register(collector.clone());
    let span_metrics = otlp::SpanMetrics::default();
    span_metrics.register(&mut registry);
    let sli_metrics = sli_export::SliMetrics::default();
    sli_metrics.register(&mut registry);
    let registry = Arc::new(registry);
    // Stalled if the loop has not turned for 3 read intervals (it also turns on every poll).
    let health = Arc::new(Health::new(
        cfg.syscalls.read_interval * 3 + Duration::from_secs(5),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let node = Some(cfg.kubernetes.node_name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
    let pod_events = start_pod_watch(&cfg, node.clone(), &telemetry).await?;
    // Spans and request SLIs share one resource per workload.
    let resource = (cfg.otlp.enabled && cfg.http.enabled).then(|| {
        // In a pod, the host name is the pod's (hostPID shares no UTS namespace): the node's
        // name is the host's.
        let host = match &node {
            Some(n) if pod_events.is_some() => Some(n.clone()),
            _ => hostname(),
        };
        otlp::resource_from_env(host.as_deref(), node.as_deref())
    });
    // Spans: the export task runs beside the agent; the agent's HTTP pipeline feeds it.
    let (spans, exporter) = if let Some(resource) = resource.clone() {
        let (sink, task) = otlp::start(&cfg.otlp, resource, span_metrics.clone());
        // It stops when the agent, and with it the last sink, is dropped: the agent flushes its
        // pending spans into the queue first, and the task exports them before ending.
        let handle = tokio::spawn(task.run(std::future::pending()));
        let setup = SpanSetup {
            options: SpanOptions::from_config(&cfg.otlp),
            metrics: span_metrics.clone(),
            sink: Some(sink),
            clock: otlp::mono_to_unix_now(),
        };
        (Some(setup), Some(handle))
    } else {
        (None, None)
    };
    // Request SLIs: the agent loop hands each interval to the export task; at stop it hands
    // over the last, partial one, and the task ends once it has sent it.
    let (sli, sli_exporter) = match resource.filter(|_| cfg.otlp.metrics) {
        Some(resource) => {
            let (sender, task) = sli_export::start(&cfg.otlp, resource, sli_metrics.clone());
            (Some(sender), Some(tokio::spawn(task.run())))
        }
        None => (None, None),
    };
    let agent = Agent::start(
        cfg.clone(),
        telemetry,
        collector,
        health.clone(),
        spans,
        sli,
        pod_events,
    )?;
    let mut agent = agent;
    if let Some((path, limit)) = record {
        agent
            .record_http(&path, limit)
            .with_context(|| format!("cannot create {} (--record-http)", path.display()))?;
    }
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(server::serve(
        listener,
        server::router(registry, health),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(
        metrics = %format!("http://{}/metrics", cfg.server.listen),
        probes = ?agent.probe_states().iter().map(|(n, s)| format!("{n}={}", s.as_str())).collect::<Vec<_>>(),
        "tenantscope-agent running"
    );

    let mut agent_stop = stop_rx;
    let agent_task = agent.run(async move {
        let _ = agent_stop.wait_for(|s| *s).await;
    });
    tokio::pin!(agent_task);
    tokio::select! {
        () = &mut agent_task => {}
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "shutting down");
            let _ = stop_tx.send(true);
            agent_task.await;
        }
    }
    let _ = stop_tx.send(true);
    // The agent (and with it the span sink and the SLI sender) is gone: the tasks flush what
    // is queued, side by side, each within about twice otlp.timeout.
    let deadline = cfg.otlp.timeout * 2 + Duration::from_secs(1);
    tokio::join!(
        finish_export(exporter, deadline, "span export", "spans"),
        finish_export(
            sli_exporter,
            deadline,
            "request SLI export",
            "SLI intervals"
        ),
    );
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    tracing::info!("stopped; all probes detached");
    Ok(())
}

/// Starts the pod watch when `[kubernetes]` says so. `enabled = "on"` makes any problem fatal;
/// `"auto"` logs it and runs without pod identity.
async fn start_pod_watch(
    cfg: &Config,
    node: Option<String>,
    telemetry: &Telemetry,
) -> anyhow::Result<Option<tokio::sync::mpsc::Receiver<tenantscope_agent::workload::PodEvent>>> {
    use tenantscope_agent::config::KubernetesMode;

    let k = &cfg.kubernetes;
    if !k.active(std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()) {
        return Ok(None);
    }
    let started = match node {
        None => Err(anyhow::anyhow!(
            "no node name: set NODE_NAME (downward API fieldRef spec.nodeName) or kubernetes.node_name"
        )),
        Some(node) => {
            let settings = k8s::WatchSettings {
                api_url: Some(k.api_url.clone()).filter(|u| !u.is_empty()),
                node,
                keep_labels: cfg.http.tenant.pod_label_keys().into_iter().collect(),
            };
            k8s::start(settings, telemetry.kube.clone()).await
        }
    };
    match started {
        Ok(rx) => Ok(Some(rx)),
        Err(e) if k.enabled == KubernetesMode::On => {
            Err(e.context("kubernetes pod watch (kubernetes.enabled = \"on\")"))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no pod identity: the Kubernetes pod watch cannot start");
            Ok(None)
        }
    }
}

/// Waits for an export task's last flush, at most `deadline`.
async fn finish_export(
    handle: Option<tokio::task::JoinHandle<()>>,
    deadline: Duration,
    what: &str,
    lost: &str,
) {
    let Some(handle) = handle else {
        return;
    };
    if tokio::time::timeout(deadline, handle).await.is_err() {
        tracing::warn!("{what} did not finish within {deadline:?}; remaining {lost} dropped");
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
