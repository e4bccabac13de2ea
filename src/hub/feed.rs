//! The hub's versioned index: what subscribers read (DESIGN §5).
//!
//! Owns: a copy of the reduced objects (`codec::Objects`) kept in step with
//! the `IndexWriter` through its change feed; the history, a bounded queue
//! of encoded delta frames, each encoded once and shared by every
//! subscriber; and the last encoded snapshot. Must not: block the writer
//! (the feed callback runs on the source's task: it applies, encodes one
//! delta and returns), or hold its lock while encoding a snapshot.
//!
//! Subscribers pull: each stream keeps only its position (a version) and
//! asks `catch_up` for the frames after it when it can send. A subscriber
//! that does not read is simply not asking, so it costs the others nothing;
//! when it reads again and its position has left the history, it gets a
//! snapshot (a resnap). The history bounds what is kept for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::cluster::codec::{self, Objects};
use crate::cluster::index::IndexWriter;
use crate::cluster::model::Change;
use crate::metrics::HubMetrics;

/// The bounds of the history.
#[derive(Clone, Copy, Debug)]
pub struct FeedSettings {
    /// Delta frames kept.
    pub history: usize,
    /// Bytes of delta frames kept.
    pub history_bytes: usize,
    /// A cached snapshot is handed out while it is at most this many versions
    /// old (the subscriber catches up from the history); older, a new one is
    /// encoded. Bounds both the encoding work when many agents connect at once
    /// and the deltas replayed after a snapshot.
    pub snapshot_reuse: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            history: 10_000,
            history_bytes: 64 << 20,
            snapshot_reuse: 256,
        }
    }
}

/// What a subscriber at some position gets next.
#[derive(Debug)]
pub enum CatchUp {
    /// Delta frames (concatenated) up to and including version `to`.
    Frames { bytes: Bytes, to: u64, frames: usize },
    /// Nothing after the position; the index is at `version` (≥ the position:
    /// publishes that changed nothing have no frame).
    UpToDate { version: u64 },
    /// The history no longer has the deltas after the position: resnap.
    Behind,
}

/// The versioned index the hub serves.
#[derive(Debug)]
pub struct Feed {
    /// Names this hub process's sequence of versions; random per start.
    origin: u64,
    settings: FeedSettings,
    inner: Mutex<Inner>,
    /// The current version, for subscribers waiting for news.
    version: watch::Sender<u64>,
    /// One snapshot encoding at a time: the others wait and share it.
    encoding: tokio::sync::Mutex<()>,
    metrics: HubMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Objects,
    version: u64,
    /// Delta frames in version order, each with its version.
    history: VecDeque<(u64, Bytes)>,
    history_bytes: usize,
    /// Every delta after this version is in `history`.
    base: u64,
    snapshot: Option<(u64, Bytes)>,
}

impl Feed {
    pub fn new(settings: FeedSettings, metrics: HubMetrics) -> Arc<Feed> {
        let origin = loop {
            // 0 is what an agent with no position sends.
            let o: u64 = rand::random();
            if o != 0 {
                break o;
            }
        };
        Arc::new(Feed {
            origin,
            settings,
            inner: Mutex::new(Inner::default()),
            version: watch::channel(0).0,
            encoding: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Follows `writer` from now on (its current objects included).
    pub fn attach(self: &Arc<Self>, writer: &mut IndexWriter) {
        let feed = self.clone();
        writer.set_feed(Box::new(move |version, changes| feed.publish(version, changes)));
    }

    pub fn origin(&self) -> u64 {
        self.origin
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Resolves when the version changes; `borrow_and_update` before checking.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Whether a subscriber at `version` of this origin can continue from the history.
    pub fn can_resume(&self, version: u64) -> bool {
        let inner = self.lock();
        inner.base <= version && version <= inner.version
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one assignment).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer published `version` with `changes`.
    fn publish(&self, version: u64, changes: &[Change]) {
        let mut inner = self.lock();
        inner.objects.apply(changes);
        inner.version = version;
        if !changes.is_empty() {
            let frame = Bytes::from(codec::encode_delta(version, changes));
            inner.history_bytes += frame.len();
            inner.history.push_back((version, frame));
            while inner.history.len() > self.settings.history || inner.history_bytes > self.settings.history_bytes {
                let Some((v, old)) = inner.history.pop_front() else {
                    break;
                };
                inner.history_bytes -= old.len();
                inner.base = v;
            }
        }
        self.metrics.version.set(version as i64);
        self.metrics.history_frames.set(inner.history.len() as i64);
        self.metrics.history_bytes.set(inner.history_bytes as i64);
        drop(inner);
        self.version.send_replace(version);
    }

    /// The delta frames after `after`, at most about `max_bytes` of them (at
    /// least one frame).
    pub fn catch_up(&self, after: u64, max_bytes: usize) -> CatchUp {
        let inner = self.lock();
        if after < inner.base || after > inner.version {
            return CatchUp::Behind;
        }
        // Versions ascend: find the first frame after the position.
        let start = inner.history.partition_point(|(v, _)| *v <= after);
        let Some((_, first)) = inner.history.get(start) else {
            return CatchUp::UpToDate { version: inner.version };
        };
        let (mut end, mut size) = (start + 1, first.len());
        while let Some((_, f)) = inner.history.get(end) {
            if size + f.len() > max_bytes {
                break;
            }
            size += f.len();
            end += 1;
        }
        let to = inner.history[end - 1].0;
        let bytes = if end == start + 1 {
            first.clone()
        } else {
            let mut buf = BytesMut::with_capacity(size);
            inner
                .history
                .range(start..end)
                .for_each(|(_, f)| buf.extend_from_slice(f));
            buf.freeze()
        };
        CatchUp::Frames {
            bytes,
            to,
            frames: end - start,
        }
    }

    /// A snapshot frame and its version: the cached one while it is recent
    /// and the history still continues from it, else a new one (encoded off
    /// the async threads, outside the lock).
    pub async fn snapshot(&self) -> (u64, Bytes) {
        let _one_at_a_time = self.encoding.lock().await;
        let (objects, version) = {
            let inner = self.lock();
            if let Some((v, bytes)) = &inner.snapshot {
                if *v >= inner.base && inner.version - *v <= self.settings.snapshot_reuse {
                    return (*v, bytes.clone());
                }
            }
            (inner.objects.clone(), inner.version)
        };
        let origin = self.origin;
        let encode = move || Bytes::from(codec::encode_snapshot(origin, version, &objects));
        let bytes = match tokio::task::spawn_blocking(encode.clone()).await {
            Ok(bytes) => bytes,
            // No blocking pool (shutting down): encode here.
            Err(_) => encode(),
        };
        self.metrics.snapshot_encodes.inc();
        self.metrics.snapshot_bytes.set(bytes.len() as i64);
        self.lock().snapshot = Some((version, bytes.clone()));
        (version, bytes)
    }

    /// The objects at the current version (tests and the scale simulation compare them).
    pub fn objects(&self) -> (u64, Objects) {
        let inner = self.lock();
        (inner.version, inner.objects.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::codec::{Frame, FrameReader, MAGIC};
    use crate::cluster::index::new_index;
    use crate::cluster::model::{Service, ServiceKind};

    fn svc(name: &str) -> Change {
        Change::UpsertService(Service {
            namespace: "ns".into(),
            name: name.into(),
            kind: ServiceKind::Headless,
            ports: Box::new([]),
            publish_not_ready: false,
        })
    }

    fn feed(history: usize) -> Arc<Feed> {
        let metrics = HubMetrics::new(&prometheus::Registry::new()).unwrap();
        Feed::new(
            FeedSettings {
                history,
                history_bytes: 1 << 20,
                snapshot_reuse: 2,
            },
            metrics,
        )
    }

    fn decode(bytes: &[u8]) -> Vec<Frame> {
        let mut r = FrameReader::default();
        r.feed(&MAGIC);
        r.feed(bytes);
        std::iter::from_fn(|| r.next_frame().unwrap().map(|(f, _)| f)).collect()
    }

    #[tokio::test]
    async fn history_snapshots_and_resnaps() {
        let f = feed(3);
        let (mut w, _) = new_index();
        f.attach(&mut w);
        assert!(matches!(f.catch_up(0, 1 << 20), CatchUp::UpToDate { version: 0 }));
        for i in 0..5 {
            w.apply(svc(&format!("s{i}")));
        }
        w.apply(svc("s4")); // no change: version 6 without a frame
        assert_eq!(f.version(), 6);
        // Three frames kept: versions 3, 4, 5.
        assert!(matches!(f.catch_up(1, 1 << 20), CatchUp::Behind));
        assert!(f.can_resume(2) && !f.can_resume(1) && !f.can_resume(7));
        let CatchUp::Frames { bytes, to, frames } = f.catch_up(2, 1 << 20) else {
            panic!()
        };
        assert_eq!((to, frames), (5, 3));
        let versions: Vec<u64> = decode(&bytes)
            .into_iter()
            .map(|fr| match fr {
                Frame::Delta { version, .. } => version,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(versions, [3, 4, 5]);
        // A small batch limit still makes progress, one frame at a time.
        let CatchUp::Frames { to, frames, .. } = f.catch_up(2, 1) else {
            panic!()
        };
        assert_eq!((to, frames), (3, 1));
        assert!(matches!(f.catch_up(5, 1 << 20), CatchUp::UpToDate { version: 6 }));

        let (v, snap) = f.snapshot().await;
        assert_eq!(v, 6);
        let [Frame::Snapshot(s)] = &decode(&snap)[..] else {
            panic!()
        };
        assert_eq!((s.origin, s.version, s.services.len()), (f.origin(), 6, 5));
        // Reused while recent, re-encoded when too old.
        w.apply(svc("s5"));
        assert_eq!(f.snapshot().await.0, 6);
        w.apply(svc("s6"));
        w.apply(svc("s7"));
        assert_eq!(f.snapshot().await.0, 9);
    }
}
