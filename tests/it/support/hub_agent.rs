//! The agent side of the hub (`cluster.source = "hub"`) running on its own
//! index, without the rest of nodens: what the hub tests watch converge.

#![allow(dead_code)]

use std::time::Duration;

use nodens::cluster::index::{new_index, IndexHandle};
use nodens::cluster::source::hub::{self as hub_source, HubSettings};
use nodens::metrics::{ClusterMetrics, Metrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
