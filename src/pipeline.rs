//! The path of a query (DESIGN §2): guard → cluster zone → cache → upstream,
//! in that fixed order; the first stage that answers ends the walk.
//!
//! Owns: the composition of the stages and the split between the two paths.
//! `answer_now` runs the stages that need no waiting (guard, cache) on the
//! caller's thread and writes straight into the caller's buffer: the UDP
//! workers call it per datagram. `resolve_miss` is the async rest (upstream),
//! entered only with a permit from the in-flight limit. Must not: touch
//! sockets (the fronts own them), or log above debug per query.
//!
//! Every upstream query goes through `fetch_for` (`fetch` for the stages):
//! identical misses share one query (`stage::coalesce`), the shaper
//! (`stage::shaper`) decides when it may be sent, and when it cannot be sent
//! or fails, expired data is served stale (RFC 8767) before SERVFAIL is.
//! Refreshes asked for by cache hits (prefetch) run in `run_refreshes`, from
//! spare upstream capacity only.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use arc_swap::ArcSwap;

use crate::cluster::authority::{Ask, Authority, Outcome};
use crate::cluster::index::IndexHandle;
use crate::metrics::{Metrics, ShedReason, Source};
use crate::stage::cache::{self, Cache, Entry, Key, Refresh, MAX_KEY_LEN};
use crate::stage::coalesce::{Flights, Role};
use crate::stage::guard::{self, Acl, Verdict};
use crate::stage::shaper::{Grant, Shaper};
use crate::stage::shortcut::{Mode, Place, SearchPath, Walk};
use crate::stage::upstream::{UpstreamError, Upstreams};
use crate::wire::{self, Query};

mod walk;

/// A bare name to resolve ahead of the client.
#[derive(Debug)]
struct WarmRequest {
    name: Box<[u8]>,
    qtype: u16,
    /// The client's query, for its class and DNSSEC bits.
    query: Query,
}

/// Continuations remembered at most, and for how long: a client sends its
/// next search query within milliseconds of our NXDOMAIN.
const CONTINUATIONS: u64 = 65_536;
const CONTINUATION_SECS: u64 = 10;

/// A flight's identity: a cache key and the address of the upstream clients asked.
const FLIGHT_KEY_LEN: usize = MAX_KEY_LEN + std::mem::size_of::<usize>();

/// Seconds a resolution failure is cached (RFC 9520 §3.2: at least 1).
const FAILURE_TTL: u32 = 1;

/// Largest answer over TCP (RFC 7766 §8: the 2-byte length prefix).
pub const TCP_LIMIT: usize = u16::MAX as usize;

/// Refresh requests from cache hits waiting for `run_refreshes`; more are dropped.
pub const REFRESH_QUEUE: usize = 1024;

/// The EXTRA-TEXT of the Extended DNS Error on a shed miss's SERVFAIL.
const RATE_LIMITED: &str = "rate limited";

/// Why `fetch_for` has no answer; coalesced misses all get the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The shaper did not let the query go upstream.
    Shed(ShedReason),
    /// Every upstream failed, or answered with something unusable.
    Upstream,
    /// The miss leading the flight went away without an outcome.
    Abandoned,
}

type Fetched = Result<Arc<Entry>, Failure>;

/// Who a fetch asks upstream for.
enum Asker {
    /// A client miss: admitted by the shaper on the client's share.
    Client(IpAddr),
    /// Background work (a refresh, a warm-up): spare capacity only.
    Background,
    /// Background work already granted from spare capacity.
    Granted(Grant),
}

/// What the synchronous stages did with a datagram.
#[derive(Debug)]
pub enum Step {
    /// `out` holds the answer.
    Answered { source: Source, rcode: u8 },
    /// The query needs `resolve_miss`, which takes this route.
    Miss(Query, Route),
    /// No answer is due.
    Drop,
}

/// Where a miss is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not in the cache: ask the upstreams.
    Upstream,
    /// A cluster-zone name before the index synced: ask `cluster_upstream`.
    ClusterFallback,
    /// An ExternalName service: CNAME to `target` plus the target's records.
    Alias { target: Box<[u8]>, ttl: u32 },
    /// The first query of a search-list walk the cache could not finish (`shortcut = "cname"`).
    Walk(Walk),
}

/// The stages a config reload replaces whole (`Pipeline::replace_live`).
/// A query loads them once and uses that one set to its end, so no answer
/// mixes old and new settings, and nothing in flight is cut off.
pub struct Live {
    pub acl: Acl,
    /// The cluster zone, when a cluster source is configured.
    pub authority: Option<Authority>,
    pub upstreams: Arc<Upstreams>,
    /// Where cluster-zone queries go before the index first syncs.
    pub cluster_fallback: Option<Arc<Upstreams>>,
    /// The search-path shortcut; needs the cluster zone to know what is a cluster name.
    pub search: Option<SearchPath>,
}

impl Live {
    /// Drops a shortcut that cannot run: off, or without a cluster zone.
    fn settled(mut self) -> Live {
        let has_zone = self.authority.is_some();
        self.search = self.search.filter(|s| has_zone && s.mode != Mode::Off);
        self
    }

    fn negative_ttl(&self) -> u32 {
        self.authority.as_ref().map_or(0, |a| a.negative_ttl())
    }
}

/// The stages a pipeline is built from.
pub struct Stages {
    pub live: Live,
    pub cache: Cache,
    /// Meters every upstream query (DESIGN §7); retuned in place on reload.
    pub shaper: Shaper,
    /// Refresh requests from the cache (`Freshness::refresh`), for `run_refreshes`.
    pub refreshes: Option<mpsc::Receiver<Refresh>>,
}

/// The transport a query came over decides the answer size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub struct Pipeline {
    live: ArcSwap<Live>,
    /// The cluster index every `Live::authority` reads (it outlives reloads).
    index: Option<IndexHandle>,
    cache: Cache,
    /// Bare names to look up ahead of the client (`shortcut = "nxdomain"`), set by `start_background`.
    warm: std::sync::OnceLock<tokio::sync::mpsc::Sender<WarmRequest>>,
    /// Names a client will ask next because we answered the first query of
    /// its walk NXDOMAIN (`P.svc.Z` after `P.<ns>.svc.Z`). Such a name looks
    /// like the first query of another walk (P' = P less its last label, in
    /// namespace "last label"), and walking it could find a name glibc would
    /// never try; remembered briefly so it is answered as asked.
    continuations: moka::sync::Cache<Box<[u8]>, ()>,
    metrics: Metrics,
    edns_udp_size: u16,
    /// Admission control for the miss path: one permit per query waiting on an upstream.
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    shaper: Shaper,
    /// Upstream queries in flight, by cache key, for coalescing.
    flights: Flights<Fetched>,
    /// Taken once by `run_refreshes`.
    refreshes: Mutex<Option<mpsc::Receiver<Refresh>>>,
}

impl Pipeline {
    pub fn new(stages: Stages, metrics: Metrics, edns_udp_size: u16, max_inflight: usize) -> Pipeline {
        let Stages {
            live,
            cache,
            shaper,
            refreshes,
        } = stages;
        let index = live.authority.as_ref().map(|a| a.index().clone());
        Pipeline {
            live: ArcSwap::from_pointee(live.settled()),
            index,
            cache,
            warm: std::sync::OnceLock::new(),
            continuations: moka::sync::Cache::builder()
                .max_capacity(CONTINUATIONS)
                .time_to_live(std::time::Duration::from_secs(CONTINUATION_SECS))
                .build(),
            metrics,
            edns_udp_size,
            inflight: Arc::new(Semaphore::new(max_inflight)),
            max_inflight,
            shaper,
            flights: Flights::default(),
            refreshes: Mutex::new(refreshes),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cluster index, when a cluster source is configured.
    pub fn index(&self) -> Option<&IndexHandle> {
        self.index.as_ref()
    }

    /// The stages in use now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts reloaded stages in place: queries that loaded the old ones finish
    /// with them, the next datagram reads the new ones. The cache, the
    /// shaper's state and the queries in flight are kept.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live.settled()));
    }

    pub fn shaper(&self) -> &Shaper {
        &self.shaper
    }

    fn limit(&self, query: &Query, transport: Transport) -> usize {
        match transport {
            Transport::Udp => query.udp_limit(self.edns_udp_size),
            Transport::Tcp => TCP_LIMIT,
        }
    }

    /// Guard, cluster zone and cache, without waiting. `now` is shared by a batch of datagrams.
    pub fn answer_now(
        &self,
        msg: &[u8],
        src: SocketAddr,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        // One load per datagram: every stage below sees the same settings.
        let live = self.live.load();
        let query = match guard::check(msg, src.ip(), &live.acl) {
            Verdict::Resolve(q) => q,
            Verdict::Drop => return Step::Drop,
            verdict => {
                guard::write(&verdict, msg, self.edns_udp_size, out);
                return Step::Answered {
                    source: Source::Local,
                    rcode: verdict.rcode(),
                };
            }
        };
        let key = Key::new(query.qname(msg), query.qtype, query.qclass, query.dnssec_ok());
        let limit = self.limit(&query, transport);
        if let Some(authority) = &live.authority {
            let ask = Ask {
                msg,
                query: &query,
                lname: key.name(),
                limit,
                our_udp_size: self.edns_udp_size,
            };
            match authority.answer(&ask, out) {
                Outcome::NotOurs => {}
                Outcome::Answered {
                    rcode: wire::RCODE_NXDOMAIN,
                } => return self.after_cluster_nxdomain(&live, msg, query, &key, now, transport, out),
                Outcome::Answered { rcode } => {
                    return Step::Answered {
                        source: Source::Cluster,
                        rcode,
                    }
                }
                Outcome::Alias { target, ttl } => return Step::Miss(query, Route::Alias { target, ttl }),
                Outcome::NotSynced if live.cluster_fallback.is_some() => {
                    return Step::Miss(query, Route::ClusterFallback)
                }
                Outcome::NotSynced => {
                    self.write_servfail(msg, &query, out);
                    return Step::Answered {
                        source: Source::Local,
                        rcode: wire::RCODE_SERVFAIL,
                    };
                }
            }
        }
        if let Some(entry) = self.cache.get(&key, now) {
            if entry.write_answer(msg, &query, now, limit, self.edns_udp_size, out) {
                return Step::Answered {
                    source: Source::Cache,
                    rcode: entry.rcode(),
                };
            }
        }
        Step::Miss(query, Route::Upstream)
    }

    /// A cluster NXDOMAIN is in `out`. If it is the first query of a
    /// search-list walk, the shortcut takes over (DESIGN §3).
    #[allow(clippy::too_many_arguments)]
    fn after_cluster_nxdomain(
        &self,
        live: &Live,
        msg: &[u8],
        query: Query,
        key: &Key,
        now: Instant,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Step {
        let nxdomain = Step::Answered {
            source: Source::Cluster,
            rcode: wire::RCODE_NXDOMAIN,
        };
        let Some(search) = &live.search else { return nxdomain };
        let Some(walk) = search.first_query(key.name()) else {
            return nxdomain;
        };
        if self.continuations.contains_key(key.name()) {
            return nxdomain;
        }
        match search.mode {
            Mode::Off => nxdomain,
            Mode::Nxdomain => {
                self.expect_continuation(search, key.name(), walk);
                let bare = search.bare(key.name(), walk);
                if bare.place == Place::Bare {
                    self.warm_bare(bare.name(), &query, now);
                }
                nxdomain
            }
            Mode::Cname => {
                // Keep the NXDOMAIN: the walk writes over it only when it finds a name.
                match self.walk_now(live, search, msg, &query, key.name(), walk, now, transport, out) {
                    walk::WalkEnd::Answered { rcode } => Step::Answered {
                        source: Source::Shortcut,
                        rcode,
                    },
                    walk::WalkEnd::NotFound => {
                        self.expect_continuation(search, key.name(), walk);
                        nxdomain
                    }
                    walk::WalkEnd::Unwritten => {
                        self.expect_continuation(search, key.name(), walk);
                        self.cluster_answer(live, msg, &query, transport, out);
                        nxdomain
                    }
                    walk::WalkEnd::NeedFetch => Step::Miss(query, Route::Walk(walk)),
                }
            }
        }
    }

    /// Remembers that the client of this walk will ask `P.svc.Z` next.
    fn expect_continuation(&self, search: &SearchPath, lname: &[u8], walk: Walk) {
        if let Some(next) = search.candidates(lname, walk).next() {
            self.continuations.insert(next.name().into(), ());
        }
    }

    /// Writes the cluster authority's own answer for `query` into `out`.
    fn cluster_answer(
        &self,
        live: &Live,
        msg: &[u8],
        query: &Query,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> (Source, u8) {
        let key = Key::new(query.qname(msg), query.qtype, query.qclass, query.dnssec_ok());
        let ask = Ask {
            msg,
            query,
            lname: key.name(),
            limit: self.limit(query, transport),
            our_udp_size: self.edns_udp_size,
        };
        match live.authority.as_ref().map(|a| a.answer(&ask, out)) {
            Some(Outcome::Answered { rcode }) => (Source::Cluster, rcode),
            _ => {
                self.write_servfail(msg, query, out);
                (Source::Cluster, wire::RCODE_SERVFAIL)
            }
        }
    }

    /// Asks for the bare name `P.` in the background unless it is cached, so
    /// it is warm when the client's own walk gets there (`shortcut = "nxdomain"`).
    fn warm_bare(&self, name: &[u8], query: &Query, now: Instant) {
        let key = Key::new(name, query.qtype, query.qclass, query.dnssec_ok());
        if self.cache.get(&key, now).is_some() {
            return;
        }
        if let Some(tx) = self.warm.get() {
            // Never wait on the hit path: a full queue drops the warm, the client asks anyway.
            let request = WarmRequest {
                name: name.into(),
                qtype: query.qtype,
                query: *query,
            };
            if tx.try_send(request).is_ok() {
                self.metrics.warms.inc();
            }
        }
    }

    /// Starts the background task that warms bare names (`shortcut =
    /// "nxdomain"`, which a reload may turn on). Call once, on the runtime.
    pub fn start_background(self: &Arc<Self>) {
        const QUEUE: usize = 1024;
        const CONCURRENT: usize = 32;
        if self.index.is_none() {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WarmRequest>(QUEUE);
        if self.warm.set(tx).is_err() {
            return;
        }
        let pipeline = Arc::downgrade(self);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(CONCURRENT));
            while let Some(req) = rx.recv().await {
                let Some(p) = pipeline.upgrade() else { return };
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(name) = Name::from_bytes(&req.name) else { return };
                    let key = Key::new(&req.name, req.qtype, req.query.qclass, req.query.dnssec_ok());
                    p.fetch_background(&name, RecordType::from(req.qtype), &req.query, &key)
                        .await;
                    drop(permit);
                });
            }
        });
    }

    /// A permit to enter the miss path, or None when `max_inflight` queries already wait.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().ok()
    }

    /// SERVFAIL with the question echoed: when the miss path is full, or resolution failed.
    pub fn write_servfail(&self, msg: &[u8], query: &Query, out: &mut Vec<u8>) {
        cache::write_empty(
            msg,
            query,
            query.flags,
            wire::RCODE_SERVFAIL,
            false,
            self.edns_udp_size,
            out,
        );
    }

    /// The stages that may wait: names below a cached NXDOMAIN (RFC 8020),
    /// then the upstream. Always writes an answer; SERVFAIL when upstream fails.
    /// `client` is the source address: its share of the upstream is what
    /// the miss spends (DESIGN §7).
    #[allow(clippy::too_many_arguments)]
    pub async fn resolve_miss(
        &self,
        msg: &[u8],
        query: &Query,
        route: Route,
        transport: Transport,
        client: IpAddr,
        _permit: OwnedSemaphorePermit,
        out: &mut Vec<u8>,
    ) -> (Source, u8) {
        self.metrics.inflight.inc();
        let live = self.live.load_full();
        let answer = match route {
            Route::Upstream => {
                self.resolve_upstream(msg, query, &live.upstreams, transport, client, out)
                    .await
            }
            Route::ClusterFallback => {
                let fallback = live.cluster_fallback.as_ref().unwrap_or(&live.upstreams);
                self.resolve_upstream(msg, query, fallback, transport, client, out)
                    .await
            }
            Route::Alias { target, ttl } => {
                self.resolve_alias(&live, msg, query, &target, ttl, transport, client, out)
                    .await
            }
            Route::Walk(walk) => self.resolve_walk(&live, msg, query, walk, transport, client, out).await,
        };
        self.metrics.inflight.dec();
        answer
    }

    /// The CNAME of an ExternalName service, followed by the target's records
    /// from the cache or the upstream: clients' stub resolvers do not chase
    /// CNAMEs themselves. The target is cached under its own name, like any
    /// other; the combined answer is assembled per query.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_alias(
        &self,
        live: &Live,
        msg: &[u8],
        query: &Query,
        target: &[u8],
        cname_ttl: u32,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> (Source, u8) {
        let servfail = |out: &mut Vec<u8>| {
            self.write_servfail(msg, query, out);
            (Source::Cluster, wire::RCODE_SERVFAIL)
        };
        let Ok(target_name) = Name::from_bytes(target) else {
            return servfail(out);
        };
        let qtype = RecordType::from(query.qtype);
        let key = Key::new(target, query.qtype, query.qclass, query.dnssec_ok());
        let entry = match self.cache.get(&key, Instant::now()) {
            Some(e) => e,
            None => match self
                .fetch(&target_name, qtype, query, &key, &live.upstreams, client)
                .await
            {
                Some(e) => e,
                None => return servfail(out),
            },
        };
        let limit = self.limit(query, transport);
        match entry.write_behind_cname(
            msg,
            query,
            &target_name,
            cname_ttl,
            Instant::now(),
            limit,
            self.edns_udp_size,
            out,
        ) {
            Ok(()) => {
                // The question is an ExternalName in our zone: we are its authority.
                wire::set_authoritative(out);
                (Source::Cluster, entry.rcode())
            }
            Err(_) => servfail(out),
        }
    }

    /// Asks `upstreams` for (`name`, `qtype`) on behalf of `client` and
    /// caches the answer under `key`. None when there is no answer, fresh or
    /// stale: the shaper shed the query, or every upstream failed (the failure
    /// is cached too, RFC 9520). A stale answer (RFC 8767) is an entry whose
    /// `is_stale` is true; `write_answer` gives it the stale TTL and EDE.
    pub(crate) async fn fetch(
        &self,
        name: &Name,
        qtype: RecordType,
        query: &Query,
        key: &Key,
        upstreams: &Upstreams,
        client: IpAddr,
    ) -> Option<Arc<Entry>> {
        let (dnssec_ok, cd) = (query.dnssec_ok(), query.checking_disabled());
        self.fetch_for(name, qtype, dnssec_ok, cd, key, upstreams, Asker::Client(client))
            .await
            .ok()
    }

    /// `fetch` for work no client waits on (warming a name): sent only from
    /// spare upstream capacity, like a refresh, and dropped when there is none.
    pub(crate) async fn fetch_background(
        &self,
        name: &Name,
        qtype: RecordType,
        query: &Query,
        key: &Key,
    ) -> Option<Arc<Entry>> {
        let (dnssec_ok, cd) = (query.dnssec_ok(), query.checking_disabled());
        let upstreams = self.live.load().upstreams.clone();
        self.fetch_for(name, qtype, dnssec_ok, cd, key, &upstreams, Asker::Background)
            .await
            .ok()
    }

    /// `fetch`, with the reason when there is no answer. The only place an
    /// upstream query is sent from.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_for(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
        checking_disabled: bool,
        key: &Key,
        upstreams: &Upstreams,
        asker: Asker,
    ) -> Fetched {
        let (flight, len) = self.flight_key(key, upstreams);
        let leader = match self.flights.join(&flight[..len]) {
            Role::Waiter(waiter) => {
                self.metrics.protection.coalesced.inc();
                return waiter.wait().await.unwrap_or(Err(Failure::Abandoned));
            }
            Role::Leader(leader) => leader,
        };
        let fetched = self
            .lead(name, qtype, dnssec_ok, checking_disabled, key, upstreams, asker)
            .await;
        leader.finish(fetched.clone());
        fetched
    }

    /// The cache key plus which upstreams are asked (the main ones, or the
    /// cluster fallback: the client object's address tells them apart
    /// without loading the live stages again): a flight's identity.
    fn flight_key(&self, key: &Key, upstreams: &Upstreams) -> ([u8; FLIGHT_KEY_LEN], usize) {
        let mut buf = [0u8; FLIGHT_KEY_LEN];
        let k = key.as_bytes();
        buf[..k.len()].copy_from_slice(k);
        let id = (upstreams as *const Upstreams as usize).to_ne_bytes();
        buf[k.len()..k.len() + id.len()].copy_from_slice(&id);
        (buf, k.len() + id.len())
    }

    /// The leader's part of a flight: admission, the upstream, the cache.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
        checking_disabled: bool,
        key: &Key,
        upstreams: &Upstreams,
        asker: Asker,
    ) -> Fetched {
        let client = matches!(asker, Asker::Client(_));
        if client {
            // A flight that ended between this miss's cache lookup and now filled the cache.
            if let Some(entry) = self.cache.peek(key, Instant::now()) {
                return Ok(entry);
            }
        }
        let grant = match asker {
            Asker::Client(ip) => self.shaper.admit(ip).await,
            Asker::Background => self.shaper.try_spare().ok_or_else(|| {
                self.metrics.protection.shed(ShedReason::NoSpare);
                ShedReason::NoSpare
            }),
            Asker::Granted(grant) => Ok(grant),
        };
        let failure = match grant {
            Err(why) => Failure::Shed(why),
            Ok(grant) => {
                let response = upstreams
                    .resolve_paced(name, qtype, dnssec_ok, checking_disabled, &grant)
                    .await;
                drop(grant);
                match response {
                    Ok(response) => {
                        let limits = self.cache.limits();
                        match Entry::from_response(&response, name, qtype, dnssec_ok, &limits, Instant::now()) {
                            Ok(entry) => {
                                let entry = Arc::new(entry);
                                self.cache.insert(key, entry.clone());
                                return Ok(entry);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, %name, ?qtype, "upstream answer not usable");
                                Failure::Upstream
                            }
                        }
                    }
                    Err(UpstreamError::RateLimited { .. }) => Failure::Shed(ShedReason::QueueTimeout),
                    Err(e) => {
                        tracing::debug!(error = %e, %name, ?qtype, "upstream failed");
                        Failure::Upstream
                    }
                }
            }
        };
        self.fall_back(name, qtype, key, failure, client)
    }

    /// No fresh answer from upstream: keep fresh data a refresh failed to
    /// replace; else serve what expired within `stale_ttl` (RFC 8767), as a
    /// stale copy that hits answer until a refresh works; else remember a
    /// client's upstream failure for a second (RFC 9520 §3.2).
    fn fall_back(&self, name: &Name, qtype: RecordType, key: &Key, failure: Failure, client: bool) -> Fetched {
        let now = Instant::now();
        if let Some(entry) = self.cache.peek(key, now) {
            if !entry.is_stale() && !entry.is_failure() {
                return Ok(entry);
            }
        }
        if let Some(stale) = self.cache.get_stale(key, now) {
            let copy = Arc::new(stale.stale_copy(now, self.cache.stale_answer_ttl()));
            self.cache.insert(key, copy.clone());
            return Ok(copy);
        }
        if failure == Failure::Upstream && client {
            if let Ok(entry) = Entry::failure(name, qtype, FAILURE_TTL, now) {
                self.cache.insert(key, Arc::new(entry));
            }
        }
        Err(failure)
    }

    /// Sends refreshes asked for by cache hits (prefetch in the last 10% of a
    /// TTL, rechecks of stale copies) upstream, from spare capacity only: one
    /// that finds no spare token or slot is dropped, and the entry is fetched
    /// by a miss when it expires instead. Runs until `shutdown`.
    pub async fn run_refreshes(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let taken = self.refreshes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut requests) = taken else { return };
        let m = &self.metrics.protection;
        loop {
            let request = tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = crate::front::tcp::stopped(&mut shutdown) => return,
            };
            let Some(key) = Key::from_bytes(&request.key) else {
                continue;
            };
            let upstreams = self.live.load().upstreams.clone();
            let (flight, len) = self.flight_key(&key, &upstreams);
            if self.flights.in_flight(&flight[..len]) {
                m.prefetch_in_flight.inc();
                continue;
            }
            let Ok(name) = Name::from_bytes(key.name()) else {
                continue;
            };
            let Some(grant) = self.shaper.try_spare() else {
                m.prefetch_no_spare.inc();
                m.shed(ShedReason::NoSpare);
                continue;
            };
            m.prefetch_sent.inc();
            let pipeline = self.clone();
            tokio::spawn(async move {
                let qtype = RecordType::from(key.qtype());
                let asker = Asker::Granted(grant);
                let _ = pipeline
                    .fetch_for(&name, qtype, key.dnssec_ok(), false, &key, &upstreams, asker)
                    .await;
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve_upstream(
        &self,
        msg: &[u8],
        query: &Query,
        upstreams: &Upstreams,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> (Source, u8) {
        let servfail = |out: &mut Vec<u8>| {
            self.write_servfail(msg, query, out);
            (Source::Upstream, wire::RCODE_SERVFAIL)
        };
        // The question name was checked by the guard; hickory re-reads it for the upstream query.
        let Ok(name) = Name::from_bytes(query.qname(msg)) else {
            return servfail(out);
        };
        let qtype = RecordType::from(query.qtype);
        let key = Key::new(query.qname(msg), query.qtype, query.qclass, query.dnssec_ok());
        let limit = self.limit(query, transport);
        let now = Instant::now();
        if let Some(ancestor) = self.cache.get_ancestor_nxdomain(&key, now) {
            if let Ok(entry) = ancestor.for_descendant(&name, qtype) {
                let entry = Arc::new(entry);
                self.cache.insert(&key, entry.clone());
                if entry.write_answer(msg, query, now, limit, self.edns_udp_size, out) {
                    return (Source::Cache, entry.rcode());
                }
            }
        }
        let asker = Asker::Client(client);
        let (dnssec_ok, cd) = (query.dnssec_ok(), query.checking_disabled());
        match self
            .fetch_for(&name, qtype, dnssec_ok, cd, &key, upstreams, asker)
            .await
        {
            Ok(entry) if entry.write_answer(msg, query, Instant::now(), limit, self.edns_udp_size, out) => {
                if entry.is_stale() {
                    self.metrics.protection.stale_miss.inc();
                    (Source::Cache, entry.rcode())
                } else {
                    (Source::Upstream, entry.rcode())
                }
            }
            Err(Failure::Shed(_)) => {
                // RFC 8914: the SERVFAIL says why, to clients that read EDNS.
                cache::write_empty_ede(
                    msg,
                    query,
                    wire::RCODE_SERVFAIL,
                    wire::ede::OTHER,
                    RATE_LIMITED,
                    self.edns_udp_size,
                    out,
                );
                (Source::Local, wire::RCODE_SERVFAIL)
            }
            _ => servfail(out),
        }
    }

    /// Waits until every query on the miss path is answered (for draining).
    pub async fn drained(&self) {
        let _all = self.inflight.acquire_many(self.max_inflight as u32).await;
    }
}
