//! Coalescing of identical misses (DESIGN §7): while one upstream query for
//! a cache key is in flight, every other miss for that key waits for its
//! result instead of sending its own (unbound and dnsmasq do this; CoreDNS
//! does not, coredns#2879).
//!
//! Owns: the table of flights in progress. The first miss for a key becomes
//! the flight's `Leader` and must `finish` it with the outcome; later misses
//! get a `Waiter` that resolves to the same value. A leader dropped without
//! finishing (its task cancelled) ends the flight with `None` for every
//! waiter, so nobody waits forever.
//! Must not: hold a lock across an await, or be on the hit path: the table is
//! consulted only by misses. It is split into shards so misses for
//! different names on different threads rarely meet on one mutex.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Shards of the table; a power of two.
const SHARDS: usize = 16;

type Shard<T> = Mutex<HashMap<Box<[u8]>, watch::Receiver<Option<T>>>>;

/// Flights in progress, by key.
pub struct Flights<T> {
    shards: Box<[Shard<T>]>,
}

/// What a miss is to the flight for its key.
pub enum Role<'a, T> {
    /// No flight was in progress: this miss asks upstream and must `finish`.
    Leader(Leader<'a, T>),
    /// A flight was in progress: wait for its outcome.
    Waiter(Waiter<T>),
}

/// The miss that asks upstream for everyone waiting on the same key.
pub struct Leader<'a, T> {
    flights: &'a Flights<T>,
    key: Box<[u8]>,
    tx: Option<watch::Sender<Option<T>>>,
}

/// A miss waiting for a flight led by another.
pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// FNV-1a over the key: only picks a shard, so it need not resist anything.
fn shard_of(key: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h as usize & (SHARDS - 1)
}

impl<T: Clone> Flights<T> {
    fn shard(&self, key: &[u8]) -> &Shard<T> {
        &self.shards[shard_of(key)]
    }

    /// Joins the flight for `key`, or starts one with this miss as its leader.
    pub fn join(&self, key: &[u8]) -> Role<'_, T> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = shard.get(key) {
            return Role::Waiter(Waiter { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        shard.insert(key.into(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.into(),
            tx: Some(tx),
        })
    }

    /// Whether a flight for `key` is in progress.
    pub fn in_flight(&self, key: &[u8]) -> bool {
        self.shard(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Flights in progress (for tests and gauges).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Leader<'_, T> {
    /// Ends the flight: every waiter gets `value`. The key is released first,
    /// so a miss arriving after this starts a new flight (it normally finds
    /// the cache filled by the leader before that).
    pub fn finish(mut self, value: T) {
        self.release();
        if let Some(tx) = self.tx.take() {
            // No receivers left is fine: nobody joined.
            let _ = tx.send(Some(value));
        }
    }

    fn release(&self) {
        let Some(tx) = &self.tx else { return };
        let mut shard = self.flights.shards[shard_of(&self.key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.get(&self.key).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
            shard.remove(&self.key);
        }
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        // Not finished: release the key; dropping the sender wakes every
        // waiter with `None`.
        self.release();
    }
}

impl<T: Clone> Waiter<T> {
    /// The flight's outcome; None if its leader went away without one.
    pub async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_get_the_leaders_outcome() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!("first is the leader")
        };
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let Role::Waiter(w) = flights.join(b"k") else {
                panic!("later ones wait")
            };
            waiters.push(tokio::spawn(w.wait()));
        }
        assert!(
            matches!(flights.join(b"other"), Role::Leader(_)),
            "other keys fly alone"
        );
        assert!(flights.in_flight(b"k"));
        leader.finish(7);
        assert!(!flights.in_flight(b"k"));
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(7));
        }
        assert!(
            matches!(flights.join(b"k"), Role::Leader(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters() {
        let flights: Flights<u32> = Flights::default();
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        let Role::Waiter(w) = flights.join(b"k") else { panic!() };
        drop(leader);
        assert_eq!(w.wait().await, None);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_joining_late_still_sees_the_value() {
        let flights: Flights<u32> = Flights::default();
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        let Role::Waiter(w) = flights.join(b"k") else { panic!() };
        leader.finish(3);
        // The value was sent before this waiter polled: watch keeps it.
        assert_eq!(w.wait().await, Some(3));
    }
}
