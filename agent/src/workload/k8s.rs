//! Thin shell over the Kubernetes API: a kube runtime watcher on the pods of this node
//! (`fieldSelector=spec.nodeName=<node>`, so the API server filters and a node's agent only ever
//! holds its own pods), converted to [`PodEvent`]s and sent to the agent's main loop, which owns
//! the [`super::PodIndex`].
//!
//! The watcher relists after an expired resource version (410) and re-watches after a dropped
//! connection; errors back off exponentially (0.8 s to 30 s, with jitter). Every error and event
//! is counted.

use std::{collections::HashSet, sync::Arc};

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::pods::{Invalid, PodEvent, PodMeta};
use crate::telemetry::KubeMetrics;

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// The API server; `None` for the in-cluster service account (or a kubeconfig).
    pub api_url: Option<String>,
    pub node: String,
    /// Pod label keys to keep (the tenant chain's `pod_label` sources).
    pub keep_labels: HashSet<String>,
}

/// Events queued between the watch and the main loop. The watch waits when it is full (the
/// API server then buffers), so no event is dropped.
const QUEUE: usize = 1024;

/// Builds the client and starts the watch task; the receiver yields converted events.
pub async fn start(
    settings: WatchSettings,
    metrics: KubeMetrics,
) -> anyhow::Result<mpsc::Receiver<PodEvent>> {
    let config = match &settings.api_url {
        Some(url) => kube::Config::new(url.parse()?),
        None => kube::Config::infer().await?,
    };
    let client = Client::try_from(config)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(client, settings, metrics, tx));
    Ok(rx)
}

async fn run(client: Client, s: WatchSettings, m: KubeMetrics, tx: mpsc::Sender<PodEvent>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", s.node));
    tracing::info!(node = %s.node, "watching this node's pods");
    let mut stream = watcher(api, config).default_backoff().boxed();
    let keep = Arc::new(s.keep_labels);
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                // The stream backs off and recovers by itself (re-watch or relist).
                m.watch_errors.inc();
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        let converted = match event {
            watcher::Event::Init => Some(PodEvent::Init),
            watcher::Event::InitDone => Some(PodEvent::InitDone),
            watcher::Event::InitApply(p) => {
                convert(&p, &keep, &m, "init_apply").map(PodEvent::InitApply)
            }
            watcher::Event::Apply(p) => convert(&p, &keep, &m, "apply").map(PodEvent::Apply),
            watcher::Event::Delete(p) => {
                m.event("delete");
                p.metadata.uid.map(|uid| PodEvent::Delete { uid })
            }
        };
        if let Some(ev) = converted
            && tx.send(ev).await.is_err()
        {
            break; // The agent is stopping.
        }
    }
}

fn convert(
    pod: &Pod,
    keep: &HashSet<String>,
    m: &KubeMetrics,
    kind: &'static str,
) -> Option<PodMeta> {
    m.event(kind);
    PodMeta::from_pod(pod, keep)
        .inspect_err(|e: &Invalid| {
            m.skipped(e.as_str());
            tracing::debug!(reason = e.as_str(), "skipping a pod object");
        })
        .ok()
}
