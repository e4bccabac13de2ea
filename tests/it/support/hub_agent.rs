//! A hub on the fake API server, and the agent side of the hub
//! (`cluster.source = "hub"`) running on its own index without the rest of
//! nodens: what the hub tests watch converge.

#![allow(dead_code)]

use std::time::Duration;

use nodens::cluster::index::{new_index, IndexHandle};
use nodens::cluster::source::hub::{self as hub_source, HubSettings};
use nodens::config::Config;
use nodens::hub::{Hub, HubSource};
use nodens::metrics::{ClusterMetrics, Metrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::kube_api::FakeKubeApi;
use super::server::holds_within;

/// A hub watching `api`, once its index has synced.
pub async fn start_hub(api: &FakeKubeApi, config: &Config) -> Hub {
    let hub = Hub::start(config, HubSource::Kubernetes(api.client())).expect("the hub starts");
    assert!(
        holds_within(Duration::from_secs(15), || hub.index().is_synced()).await,
        "the hub never synced"
    );
    hub
}

pub struct Agent {
    pub index: IndexHandle,
    pub metrics: ClusterMetrics,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Agent {
    pub fn start(settings: HubSettings) -> Agent {
        let (writer, index) = new_index();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap().cluster;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(hub_source::run(settings, writer, metrics.clone(), stopped));
        Agent {
            index,
            metrics,
            stop,
            task,
        }
    }

    /// Frames received, by kind (`snapshot`, `delta`, `heartbeat`).
    pub fn frames(&self, kind: &str) -> u64 {
        self.metrics.hub.frames.with_label_values(&[kind]).get()
    }

    /// Sessions with the hub, by outcome.
    pub fn sessions(&self, outcome: &str) -> u64 {
        self.metrics.hub.sessions.with_label_values(&[outcome]).get()
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the source stops on shutdown")
            .expect("the source does not panic");
    }
}
