//! The upstream shaper (DESIGN §7): what the node sends to its resolver stays
//! under the resolver's limits (AWS: 1024 packets/s per interface; Azure:
//! 1,000 qps and 200 pending per VM), whatever the clients do.
//!
//! Owns: the token bucket over every upstream packet (`upstream.qps`,
//! `upstream.burst`; a UDP try costs 1, a TCP try 5), the cap on queries in
//! flight (`upstream.max_inflight`), the bounded wait queue (`queue_wait`,
//! `queue_size`), the per-client shares (`per_client_qps`,
//! `per_client_burst`) and the log line naming the clients shed most.
//! Must not: be on the hit path (cache hits are never rate-limited), hold a
//! lock across an await, or keep state that grows with the number of clients.
//!
//! The bucket is a GCRA (generic cell rate algorithm): one atomic holds the
//! theoretical arrival time of the next token, so taking a token is one
//! compare-and-swap and waiting for one is a reservation of a future slot,
//! never a lock. Priorities are different tolerances on the same bucket:
//!
//! - a client miss within its share takes a token now, or reserves the first
//!   one free within `queue_wait` and sleeps until then (the queue: bounded
//!   in entries, the newest shed first, FIFO by reservation);
//! - spare work (refreshes, and misses of clients over their share) takes a
//!   token only now and only if half the burst stays in the bucket, and an
//!   in-flight slot only if half of them stay free. A queued client miss
//!   reserves ahead of the clock, which leaves no spare token at all;
//! - among clients over their share, the more a client has lately borrowed
//!   (a decaying average of its spare tokens per second, relative to its
//!   share), the more tokens its spare take must leave: when spare tokens
//!   are contended, a busy pod borrowing a little is served before a flood
//!   borrowing a lot, and alone, either still gets every spare token.
//!
//! So the upstream sees at most `burst + qps × t` packets in any window of
//! `t` seconds (counted when granted), client misses go first, and a client
//! flooding random names sheds its own misses once its share is spent.
//! Per-client shares live in a fixed table of buckets indexed by a hash of
//! the source address: no allocation per client, and two clients sharing a
//! slot only share a share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::{ProtectionMetrics, ShedReason};
use crate::stage::upstream::Pace;

/// Buckets in the per-client table (a power of two; 128 KiB). A node runs
/// at most a few hundred pods, so two sharing a slot is rare.
const CLIENT_SLOTS: usize = 16384;
/// How often the clients shed most are logged, at most.
const OFFENDER_LOG_EVERY: Duration = Duration::from_secs(10);
/// Distinct clients counted between two offender log lines; the rest are "others".
const OFFENDERS_TRACKED: usize = 64;
/// Clients named in one offender log line.
const OFFENDERS_LOGGED: usize = 5;

/// The `[upstream]` keys the shaper uses.
#[derive(Clone, Copy, Debug)]
pub struct ShaperSettings {
    /// Token refill, packets per second.
    pub qps: u32,
    /// Bucket size, packets.
    pub burst: u32,
    /// Upstream queries in flight at once.
    pub max_inflight: usize,
    /// Each client's share, misses per second; 0 turns shares off.
    pub per_client_qps: u32,
    pub per_client_burst: u32,
    /// Longest a client miss waits for a token or an in-flight slot.
    pub queue_wait: Duration,
    /// Client misses waiting at once; more are shed at once.
    pub queue_size: usize,
}

/// The parameters of a GCRA bucket.
#[derive(Clone, Copy)]
struct Rate {
    /// Nanoseconds per token.
    interval: u64,
    /// Tokens the bucket holds.
    burst: u64,
}

impl Rate {
    fn new(per_second: u32, burst: u32) -> Rate {
        Rate {
            interval: 1_000_000_000 / u64::from(per_second.max(1)),
            burst: u64::from(burst.max(1)),
        }
    }

    /// Takes `n` tokens from the bucket whose theoretical arrival time (ns
    /// since the shaper's epoch) of the next token is `tat`, leaving at least
    /// `keep` in it, at `now` or at the first instant within `max_wait` ns
    /// when they are there. Returns how long to wait before using them, or
    /// None (nothing taken). The bucket is full when `tat` is in the past.
    fn reserve(&self, tat: &AtomicU64, now: u64, n: u64, keep: u64, max_wait: u64) -> Option<u64> {
        let tolerance = self.burst.saturating_sub(keep) * self.interval;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = current.max(now) + n * self.interval;
            // The instant from which `next - t <= tolerance` holds.
            let wait = next.saturating_sub(tolerance).saturating_sub(now);
            if wait > max_wait {
                return None;
            }
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(wait),
                Err(actual) => current = actual,
            }
        }
    }
}

/// One GCRA bucket. Its rate may be changed while it is in use (a config
/// reload); the bucket keeps its level, counted in time.
struct Gcra {
    tat: AtomicU64,
    interval: AtomicU64,
    burst: AtomicU64,
}

impl Gcra {
    fn new(per_second: u32, burst: u32) -> Gcra {
        let g = Gcra {
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(0),
            burst: AtomicU64::new(0),
        };
        g.set_rate(per_second, burst);
        g
    }

    fn set_rate(&self, per_second: u32, burst: u32) {
        let rate = Rate::new(per_second, burst);
        self.interval.store(rate.interval, Ordering::Relaxed);
        self.burst.store(rate.burst, Ordering::Relaxed);
    }

    fn rate(&self) -> Rate {
        Rate {
            interval: self.interval.load(Ordering::Relaxed),
            burst: self.burst.load(Ordering::Relaxed),
        }
    }

    /// See `Rate::reserve`.
    fn reserve(&self, now: u64, n: u64, keep: u64, max_wait: u64) -> Option<u64> {
        self.rate().reserve(&self.tat, now, n, keep, max_wait)
    }

    fn burst(&self) -> u64 {
        self.burst.load(Ordering::Relaxed)
    }
}

/// The per-client buckets: one shared rate, one atomic per slot; and per
/// slot, how fast the client has lately been taking spare tokens.
struct Clients {
    rate: Rate,
    slots: Box<[AtomicU64]>,
    /// An exponentially decaying average of spare tokens taken per second,
    /// packed as (milliseconds since the epoch: u32, rate × 16: u32).
    borrowing: Box<[AtomicU64]>,
    share: f64,
}

impl Clients {
    /// The shares `settings` ask for; None when `per_client_qps` is 0.
    fn for_settings(settings: &ShaperSettings) -> Option<Clients> {
        (settings.per_client_qps > 0).then(|| Clients::new(settings.per_client_qps, settings.per_client_burst))
    }

    fn new(qps: u32, burst: u32) -> Clients {
        Clients {
            rate: Rate::new(qps, burst),
            slots: (0..CLIENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            borrowing: (0..CLIENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            share: f64::from(qps.max(1)),
        }
    }

    fn index(&self, ip: IpAddr) -> usize {
        let bits = match ip.to_canonical() {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                (b >> 64) as u64 ^ b as u64
            }
        };
        // Fibonacci hashing: the top bits of a multiply spread nearby addresses.
        (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CLIENT_SLOTS.trailing_zeros())) as usize
    }

    /// Whether the client in slot `i` has a token of its share left now (taking it).
    fn take(&self, i: usize, now: u64) -> bool {
        self.rate.reserve(&self.slots[i], now, 1, 0, 0).is_some()
    }

    /// Spare tokens per second the client in slot `i` took lately, at `now`.
    fn borrowing(&self, i: usize, now: u64) -> f64 {
        decayed(self.borrowing[i].load(Ordering::Relaxed), now)
    }

    /// Counts a spare token taken by the client in slot `i`.
    fn borrowed(&self, i: usize, now: u64) {
        let cell = &self.borrowing[i];
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let rate = decayed(current, now) + 1.0 / BORROW_TAU_S;
            let next = (u64::from((now / 1_000_000) as u32) << 32) | (rate * 16.0).min(u32::MAX as f64) as u64;
            match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The tokens a spare take by a client borrowing `rate` per second must
    /// leave in a bucket of `burst`: half of it for a client that borrows
    /// nothing, approaching all of it the more the client borrows (relative
    /// to its share). Whoever borrows least is served first when spare
    /// tokens are contended; alone, any client still gets every spare token.
    fn keep(&self, burst: u64, rate: f64) -> u64 {
        let half = burst / 2;
        let room = burst.saturating_sub(half + 1) as f64;
        half + (room * rate / (rate + self.share)).round() as u64
    }
}

/// Time constant of the average of spare tokens taken, seconds.
const BORROW_TAU_S: f64 = 1.0;

/// Unpacks a borrowing average and decays it to `now` (ns since the epoch).
fn decayed(packed: u64, now: u64) -> f64 {
    let (at_ms, rate16) = ((packed >> 32) as u32, packed as u32);
    let elapsed_ms = ((now / 1_000_000) as u32).wrapping_sub(at_ms);
    f64::from(rate16) / 16.0 * (-f64::from(elapsed_ms) / 1000.0 / BORROW_TAU_S).exp()
}

/// Clients shed for being over their share since the last log line.
struct Offenders {
    counts: HashMap<IpAddr, u64>,
    others: u64,
    since: Instant,
}

struct Inner {
    bucket: Gcra,
    /// The per-client shares; replaced (their state reset) when a reload changes them.
    clients: ArcSwapOption<Clients>,
    inflight: Arc<Semaphore>,
    /// The in-flight cap `inflight` is being brought to.
    max_inflight: AtomicUsize,
    /// Nanoseconds.
    queue_wait: AtomicU64,
    queue_size: AtomicUsize,
    /// What `retune` compares against.
    settings: Mutex<ShaperSettings>,
    waiting: AtomicUsize,
    epoch: Instant,
    metrics: ProtectionMetrics,
    offenders: Mutex<Offenders>,
}

/// The shaper; clones share it.
#[derive(Clone)]
pub struct Shaper(Arc<Inner>);

/// Leave to send one upstream query: its first UDP packet is paid for and an
/// in-flight slot is held until the grant is dropped. Further tries (the
/// next server, the TCP retry) are paid through `Pace`.
pub struct Grant {
    inner: Arc<Inner>,
    first_paid: AtomicBool,
    /// Spare grants pay further tries from spare tokens too, and never wait.
    spare: bool,
    _permit: OwnedSemaphorePermit,
}

/// Leaves one slot of the wait queue when dropped.
struct QueueSlot<'a>(&'a Inner);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.waiting.dec();
    }
}

impl Shaper {
    pub fn new(settings: ShaperSettings, metrics: ProtectionMetrics) -> Shaper {
        let max_inflight = settings.max_inflight.max(1);
        Shaper(Arc::new(Inner {
            bucket: Gcra::new(settings.qps, settings.burst),
            clients: ArcSwapOption::new(Clients::for_settings(&settings).map(Arc::new)),
            inflight: Arc::new(Semaphore::new(max_inflight)),
            max_inflight: AtomicUsize::new(max_inflight),
            queue_wait: AtomicU64::new(nanos(settings.queue_wait)),
            queue_size: AtomicUsize::new(settings.queue_size),
            settings: Mutex::new(settings),
            waiting: AtomicUsize::new(0),
            epoch: Instant::now(),
            metrics,
            offenders: Mutex::new(Offenders {
                counts: HashMap::new(),
                others: 0,
                since: Instant::now(),
            }),
        }))
    }

    /// Leave for a client miss from `client`: now, after a wait in the queue,
    /// or from spare capacity if the client is over its share. The error says
    /// why not; the caller answers stale or SERVFAIL.
    pub async fn admit(&self, client: IpAddr) -> Result<Grant, ShedReason> {
        let inner = &*self.0;
        let now = inner.now();
        if let Some(clients) = &*inner.clients.load() {
            let i = clients.index(client);
            if !clients.take(i, now) {
                // Over its share: spare tokens only, fewer the more it has been borrowing.
                let keep = clients.keep(inner.bucket.burst(), clients.borrowing(i, now));
                return match self.take_spare(keep) {
                    Some(grant) => {
                        clients.borrowed(i, now);
                        Ok(grant)
                    }
                    None => {
                        inner.shed(ShedReason::ClientShare);
                        inner.note_offender(client);
                        Err(ShedReason::ClientShare)
                    }
                };
            }
        }
        // Fast path: a slot and a token now.
        let permit = match inner.inflight.clone().try_acquire_owned() {
            Ok(p) if inner.bucket.reserve(now, 1, 0, 0).is_some() => return Ok(self.grant(p, false)),
            Ok(p) => Some(p),
            Err(_) => None,
        };
        // The queue: the newest is shed when it is full.
        if inner.waiting.fetch_add(1, Ordering::Relaxed) >= inner.queue_size.load(Ordering::Relaxed) {
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            inner.shed(ShedReason::QueueFull);
            return Err(ShedReason::QueueFull);
        }
        inner.metrics.waiting.inc();
        let _slot = QueueSlot(inner);
        inner.metrics.queued.inc();
        let deadline = Instant::now() + Duration::from_nanos(inner.queue_wait.load(Ordering::Relaxed));
        let permit = match permit {
            Some(p) => p,
            None => match tokio::time::timeout_at(deadline, inner.inflight.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    inner.shed(ShedReason::QueueTimeout);
                    return Err(ShedReason::QueueTimeout);
                }
            },
        };
        let now_at = Instant::now();
        let left = nanos(deadline.saturating_duration_since(now_at));
        // A reservation past the deadline is not taken: shed now rather than
        // make the client wait for nothing.
        let Some(wait) = inner.bucket.reserve(inner.at(now_at), 1, 0, left) else {
            inner.shed(ShedReason::QueueTimeout);
            return Err(ShedReason::QueueTimeout);
        };
        if wait > 0 {
            tokio::time::sleep_until(now_at + Duration::from_nanos(wait)).await;
        }
        Ok(self.grant(permit, false))
    }

    /// Applies reloaded `[upstream]` shaping keys while misses are in
    /// flight. The bucket keeps its level; per-client shares start afresh
    /// when their keys change; a lower in-flight cap takes effect as the
    /// queries above it finish (none is cut off).
    pub fn retune(&self, new: ShaperSettings) {
        let inner = &*self.0;
        let mut current = inner.settings.lock().unwrap_or_else(|e| e.into_inner());
        if (new.qps, new.burst) != (current.qps, current.burst) {
            inner.bucket.set_rate(new.qps, new.burst);
        }
        if (new.per_client_qps, new.per_client_burst) != (current.per_client_qps, current.per_client_burst) {
            inner.clients.store(Clients::for_settings(&new).map(Arc::new));
        }
        inner.queue_wait.store(nanos(new.queue_wait), Ordering::Relaxed);
        inner.queue_size.store(new.queue_size, Ordering::Relaxed);
        let (old_cap, new_cap) = (current.max_inflight.max(1), new.max_inflight.max(1));
        inner.max_inflight.store(new_cap, Ordering::Relaxed);
        if new_cap > old_cap {
            inner.inflight.add_permits(new_cap - old_cap);
        } else if new_cap < old_cap {
            let excess = old_cap - new_cap;
            let rest = excess - inner.inflight.forget_permits(excess);
            if rest > 0 {
                // The rest are held by queries in flight: retire them as they come back.
                let semaphore = inner.inflight.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(rest as u32).await {
                        permits.forget();
                    }
                });
            }
        }
        *current = new;
    }

    /// Leave from spare capacity, now or never: half the burst and half the
    /// in-flight slots stay for client misses. For refreshes, and for
    /// clients over their share.
    pub fn try_spare(&self) -> Option<Grant> {
        self.take_spare(self.0.spare_keep())
    }

    /// A spare grant that leaves `keep` tokens in the bucket.
    fn take_spare(&self, keep: u64) -> Option<Grant> {
        let inner = &*self.0;
        if inner.inflight.available_permits() <= inner.max_inflight.load(Ordering::Relaxed) / 2 {
            return None;
        }
        let permit = inner.inflight.clone().try_acquire_owned().ok()?;
        inner.bucket.reserve(inner.now(), 1, keep, 0)?;
        Some(self.grant(permit, true))
    }

    fn grant(&self, permit: OwnedSemaphorePermit, spare: bool) -> Grant {
        let m = &self.0.metrics;
        if spare {
            m.granted_spare.inc();
        } else {
            m.granted_client.inc();
        }
        m.packets.inc();
        m.upstream_inflight.inc();
        Grant {
            inner: self.0.clone(),
            first_paid: AtomicBool::new(true),
            spare,
            _permit: permit,
        }
    }
}

impl Inner {
    fn at(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }

    fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// Tokens spare work must leave in the bucket.
    fn spare_keep(&self) -> u64 {
        self.bucket.burst() / 2
    }

    fn shed(&self, why: ShedReason) {
        self.metrics.shed(why);
    }

    /// Counts a client shed for being over its share, and now and then logs
    /// the clients shed most: an address is a log field, never a label.
    fn note_offender(&self, client: IpAddr) {
        // Never wait for the table: a contended count is simply skipped.
        let Ok(mut o) = self.offenders.try_lock() else { return };
        if let Some(n) = o.counts.get_mut(&client) {
            *n += 1;
        } else if o.counts.len() < OFFENDERS_TRACKED {
            o.counts.insert(client, 1);
        } else {
            o.others += 1;
        }
        if o.since.elapsed() < OFFENDER_LOG_EVERY {
            return;
        }
        let mut top: Vec<(IpAddr, u64)> = o.counts.drain().collect();
        top.sort_unstable_by_key(|&(_, n)| std::cmp::Reverse(n));
        let others = o.others + top.iter().skip(OFFENDERS_LOGGED).map(|(_, n)| n).sum::<u64>();
        let named: Vec<String> = top
            .iter()
            .take(OFFENDERS_LOGGED)
            .map(|(ip, n)| format!("{ip}={n}"))
            .collect();
        let seconds = o.since.elapsed().as_secs();
        o.others = 0;
        o.since = Instant::now();
        drop(o);
        tracing::warn!(
            clients = %named.join(" "),
            others,
            seconds,
            "upstream shaper shed misses of clients over their share"
        );
    }
}

impl Pace for Grant {
    async fn pace(&self, packets: u32) -> bool {
        if self.first_paid.swap(false, Ordering::Relaxed) {
            return true;
        }
        let inner = &*self.inner;
        let (keep, max_wait) = if self.spare {
            (inner.spare_keep(), 0)
        } else {
            (0, inner.queue_wait.load(Ordering::Relaxed))
        };
        let now_at = Instant::now();
        match inner
            .bucket
            .reserve(inner.at(now_at), u64::from(packets), keep, max_wait)
        {
            Some(wait) => {
                inner.metrics.packets.inc_by(u64::from(packets));
                if wait > 0 {
                    tokio::time::sleep_until(now_at + Duration::from_nanos(wait)).await;
                }
                true
            }
            None => false,
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.inner.metrics.upstream_inflight.dec();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings() -> ShaperSettings {
        ShaperSettings {
            qps: 100,
            burst: 10,
            max_inflight: 1000,
            per_client_qps: 0,
            per_client_burst: 0,
            queue_wait: Duration::from_millis(200),
            queue_size: 1000,
        }
    }

    fn shaper(s: ShaperSettings) -> (Shaper, ProtectionMetrics) {
        let m = ProtectionMetrics::new(&prometheus::Registry::new()).unwrap();
        (Shaper::new(s, m.clone()), m)
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn gcra_allows_burst_then_rate() {
        let g = Gcra::new(10, 5); // a token every 100 ms, 5 at once
        let ms = 1_000_000;
        for _ in 0..5 {
            assert_eq!(g.reserve(0, 1, 0, 0), Some(0));
        }
        assert_eq!(g.reserve(0, 1, 0, 0), None, "the burst is spent");
        assert_eq!(g.reserve(0, 1, 0, 100 * ms), Some(100 * ms), "the next token in 100 ms");
        assert_eq!(g.reserve(0, 1, 0, 150 * ms), None, "the one after is 200 ms away");
        assert_eq!(g.reserve(200 * ms, 1, 0, 0), Some(0));
        // Refilled after a long pause, but never beyond the burst.
        for _ in 0..5 {
            assert!(g.reserve(10_000 * ms, 1, 0, 0).is_some());
        }
        assert!(g.reserve(10_000 * ms, 1, 0, 0).is_none());
        // Five packets at once (a TCP try) need five tokens.
        assert!(g.reserve(10_400 * ms, 5, 0, 0).is_none());
        assert!(g.reserve(10_500 * ms, 5, 0, 0).is_some());
    }

    #[test]
    fn gcra_spare_work_leaves_the_reserve() {
        let g = Gcra::new(10, 10);
        let taken = (0..20).filter(|_| g.reserve(0, 1, 5, 0).is_some()).count();
        assert_eq!(taken, 5, "spare work leaves half the burst");
        let taken = (0..20).filter(|_| g.reserve(0, 1, 0, 0).is_some()).count();
        assert_eq!(taken, 5, "which client misses can still take");
    }

    /// Whatever the demand, grants in any window of t seconds stay within
    /// burst + qps × t.
    #[tokio::test(start_paused = true)]
    async fn grants_never_exceed_rate_plus_burst() {
        let (s, m) = shaper(settings());
        let start = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let (s, times) = (s.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                // 2,000 misses over 2 s: 10 times what the bucket refills.
                tokio::time::sleep(Duration::from_millis(u64::from(i))).await;
                if let Ok(grant) = s.admit(A).await {
                    times.lock().unwrap().push(Instant::now() - start);
                    drop(grant);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        assert!(times.len() >= 200, "the refill is used: {} grants", times.len());
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u - *t <= Duration::from_secs(1))
                .count();
            assert!(in_window <= 10 + 100 + 1, "{in_window} grants in the second from {t:?}");
        }
        assert_eq!(m.granted_client.get() as usize, times.len());
        assert!(m.queued.get() > 0);
        assert_eq!(m.waiting.get(), 0, "the queue is empty again");
    }

    #[tokio::test(start_paused = true)]
    async fn retune_moves_the_inflight_cap_without_cutting_queries_off() {
        let (s, _) = shaper(ShaperSettings {
            qps: 1000,
            burst: 100,
            max_inflight: 4,
            ..settings()
        });
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(s.admit(A).await.expect("within the cap"));
        }
        s.retune(ShaperSettings {
            qps: 1000,
            burst: 100,
            max_inflight: 2,
            ..settings()
        });
        // The four in flight keep their grants; the slots retire as they finish.
        held.truncate(1);
        tokio::task::yield_now().await;
        assert_eq!(s.0.inflight.available_permits(), 1, "three back, two of them retired");
        drop(held);
        tokio::task::yield_now().await;
        assert_eq!(s.0.inflight.available_permits(), 2);
        s.retune(ShaperSettings {
            qps: 1000,
            burst: 100,
            max_inflight: 6,
            ..settings()
        });
        assert_eq!(s.0.inflight.available_permits(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn retune_changes_rates_and_shares_in_place() {
        let (s, m) = shaper(ShaperSettings {
            qps: 10,
            burst: 5,
            queue_wait: Duration::ZERO,
            ..settings()
        });
        let taken = |n: usize| {
            let s = s.clone();
            async move {
                let mut ok = 0;
                for _ in 0..n {
                    if let Ok(g) = s.admit(A).await {
                        ok += 1;
                        drop(g);
                    }
                }
                ok
            }
        };
        assert_eq!(taken(20).await, 5, "the burst of 5");
        s.retune(ShaperSettings {
            qps: 10,
            burst: 50,
            queue_wait: Duration::ZERO,
            ..settings()
        });
        // A bigger bucket at the same level (5 taken): 45 more tokens now.
        assert_eq!(taken(100).await, 45);
        assert_eq!(m.shed_count(ShedReason::ClientShare), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        s.retune(ShaperSettings {
            qps: 10,
            burst: 50,
            queue_wait: Duration::ZERO,
            per_client_qps: 2,
            per_client_burst: 2,
            ..settings()
        });
        // Shares from now on: 2 of the client's own, then spare tokens while its borrowing stays low.
        let after = taken(100).await;
        assert!(after < 50, "{after} admitted with shares on");
        assert!(
            m.shed_count(ShedReason::ClientShare) > 0,
            "shares apply after the retune"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_waits_at_most_queue_wait() {
        let (s, m) = shaper(settings());
        for _ in 0..10 {
            s.admit(A).await.unwrap();
        }
        // A token every 10 ms: the next 20 fit in 200 ms, in order.
        let start = Instant::now();
        for i in 1..=20u64 {
            s.admit(A).await.unwrap();
            assert_eq!(Instant::now() - start, Duration::from_millis(10 * i));
        }
        // Twenty reservations ahead: 200 ms of tokens, so the 21st is shed
        // at once rather than after waiting for nothing.
        let reserved: Vec<_> = (0..20).map(|_| s.0.bucket.reserve(s.0.now(), 1, 0, u64::MAX)).collect();
        assert!(reserved.iter().all(Option::is_some));
        let before = Instant::now();
        assert_eq!(s.admit(A).await.err(), Some(ShedReason::QueueTimeout));
        assert_eq!(Instant::now(), before);
        assert_eq!(metric(&m, ShedReason::QueueTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_cap_queues_then_sheds() {
        let (s, m) = shaper(ShaperSettings {
            max_inflight: 2,
            ..settings()
        });
        let g1 = s.admit(A).await.unwrap();
        let _g2 = s.admit(A).await.unwrap();
        // The third waits for a slot; one frees up after 50 ms.
        let s2 = s.clone();
        let third = tokio::spawn(async move { s2.admit(A).await.map(|_| Instant::now()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let freed = Instant::now();
        drop(g1);
        assert_eq!(third.await.unwrap().unwrap(), freed);
        // Nobody frees one now: shed after queue_wait.
        let _g3 = s.admit(A).await.unwrap();
        let start = Instant::now();
        assert_eq!(s.admit(A).await.err(), Some(ShedReason::QueueTimeout));
        assert_eq!(Instant::now() - start, Duration::from_millis(200));
        assert_eq!(m.upstream_inflight.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_the_newest() {
        let (s, m) = shaper(ShaperSettings {
            max_inflight: 1,
            queue_size: 3,
            ..settings()
        });
        let g = s.admit(A).await.unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.admit(A).await.is_ok() })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(m.waiting.get(), 3);
        // The fourth finds the queue full and is shed at once; those queued keep their place.
        assert_eq!(s.admit(A).await.err(), Some(ShedReason::QueueFull));
        drop(g);
        // Each waiter releases its slot at once (the grant is dropped), so all three get through.
        let served = futures::future::join_all(waiters).await;
        assert!(served.into_iter().all(|r| r.unwrap()));
        assert_eq!(metric(&m, ShedReason::QueueFull), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn spare_work_only_takes_spare_tokens_and_slots() {
        let (s, m) = shaper(settings());
        let spare: Vec<Grant> = std::iter::from_fn(|| s.try_spare()).take(100).collect();
        assert_eq!(spare.len(), 5, "half the burst");
        // Client misses still get the other half at once.
        let start = Instant::now();
        for _ in 0..5 {
            s.admit(A).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
        // A client waiting in the queue has reserved ahead: nothing is spare.
        let s2 = s.clone();
        let queued = tokio::spawn(async move { s2.admit(A).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(s.try_spare().is_none());
        assert!(queued.await.unwrap());
        // Slots: spare work leaves half of them.
        let (s, _) = shaper(ShaperSettings {
            max_inflight: 4,
            burst: 100,
            ..settings()
        });
        let held: Vec<Grant> = std::iter::from_fn(|| s.try_spare()).take(10).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(m.granted_spare.get(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_share_is_shed_and_others_are_not() {
        let (s, m) = shaper(ShaperSettings {
            per_client_qps: 10,
            per_client_burst: 2,
            ..settings()
        });
        let outcomes: Vec<bool> = futures::future::join_all((0..40).map(|_| s.admit(A)))
            .await
            .into_iter()
            .map(|r| r.is_ok())
            .collect();
        // Two from its share, then spare tokens while the bucket stays at
        // least half full, less as it borrows (two more), the rest shed.
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 4);
        assert_eq!(metric(&m, ShedReason::ClientShare), 36);
        // The neighbour's misses go through, from the half kept for them.
        for _ in 0..2 {
            assert!(s.admit(B).await.is_ok());
        }
        // A share refills: 100 ms later A has a token of its own again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(s.admit(A).await.is_ok());
    }

    /// Two clients over their shares: one asking 250 misses/s (a busy pod),
    /// one 5,000/s (a flood). Spare tokens go first to whoever borrows less,
    /// so the busy pod is served and the flood gets what is left; alone, the
    /// flood gets every spare token.
    #[tokio::test(start_paused = true)]
    async fn spare_tokens_go_to_the_client_borrowing_least() {
        let settings = ShaperSettings {
            qps: 800,
            burst: 100,
            per_client_qps: 100,
            per_client_burst: 100,
            ..settings()
        };
        let (s, _) = shaper(settings);
        let (mut busy, mut busy_ok, mut flood_ok) = (0u32, 0u32, 0u32);
        // tokio's timer ticks in milliseconds: five flood misses per tick, a busy one every fourth.
        let step = Duration::from_millis(1);
        let start = Instant::now();
        let mut i = 0u32;
        while Instant::now() - start < Duration::from_secs(4) {
            for _ in 0..5 {
                flood_ok += u32::from(s.admit(B).await.is_ok());
            }
            if i.is_multiple_of(4) {
                busy += 1;
                busy_ok += u32::from(s.admit(A).await.is_ok());
            }
            i += 1;
            tokio::time::sleep(step).await;
        }
        let secs = 4.0;
        assert!(
            busy_ok as f64 >= 0.97 * busy as f64,
            "the busy client got {busy_ok} of {busy}"
        );
        // The flood got the rest of the 800/s.
        let flood_rate = flood_ok as f64 / secs;
        assert!((400.0..=700.0).contains(&flood_rate), "flood: {flood_rate}/s");

        // Alone, a client over its share still gets every spare token: the upstream is not idle for nothing.
        let (s, _) = shaper(settings);
        let mut ok = 0u32;
        let start = Instant::now();
        while Instant::now() - start < Duration::from_secs(4) {
            for _ in 0..5 {
                ok += u32::from(s.admit(B).await.is_ok());
            }
            tokio::time::sleep(step).await;
        }
        let rate = ok as f64 / secs;
        assert!(rate >= 750.0, "alone: {rate}/s of 800");
    }

    #[tokio::test(start_paused = true)]
    async fn further_tries_pay_for_their_packets() {
        let (s, m) = shaper(settings());
        let g = s.admit(A).await.unwrap();
        assert!(g.pace(1).await, "the first try is paid by the grant");
        assert_eq!(m.packets.get(), 1);
        let start = Instant::now();
        assert!(g.pace(5).await, "a TCP retry: five of the nine tokens left");
        assert!(g.pace(1).await);
        assert_eq!(Instant::now(), start);
        assert!(g.pace(5).await, "waits for the refill");
        assert_eq!(Instant::now() - start, Duration::from_millis(20));
        assert_eq!(m.packets.get(), 12);
        // Beyond queue_wait: refused, nothing charged.
        assert!(!g.pace(50).await);
        assert_eq!(m.packets.get(), 12);
    }

    fn metric(m: &ProtectionMetrics, reason: ShedReason) -> u64 {
        m.shed_count(reason)
    }
}
