//! glibc's search-list walk as a pure state machine: given how each A+AAAA
//! pair was answered, which name a pod asks next and when it stops. This is
//! what `getaddrinfo(name, AF_UNSPEC)` does through `nss_dns`
//! (`__res_context_search` and `__res_context_query` in glibc's
//! `resolv/res_query.c`, unchanged in substance from 2.26 to today).
//!
//! The rules, each with a unit test below:
//!
//! 1. **A and AAAA go as a pair** (`T_QUERY_A_AND_AAAA`): both queries of a
//!    candidate are sent together and the walk waits for both: one round trip.
//! 2. **A pair succeeds when either answer is NOERROR with records.**
//!    Otherwise the pair's error comes from the A answer's rcode, or from the
//!    AAAA answer's when A said NOERROR: NXDOMAIN → not found, NOERROR → no
//!    data, SERVFAIL → try again, FORMERR/NOTIMP/REFUSED/other → no recovery.
//!    When only one of the two answers came back, glibc uses it for both.
//! 3. **Trailing dot**: the name is asked as-is, once, and the walk ends
//!    there whatever the answer.
//! 4. **ndots**: a name with `dots >= ndots` is asked as-is first; if that
//!    fails the search list is still tried (and the name is not asked as-is
//!    again). A name with fewer dots starts with the search list.
//! 5. **The search list** is tried in order. The walk goes on to the next
//!    suffix after "not found", "no data", and "try again" when the *A*
//!    answer itself was SERVFAIL; anything else (no recovery, a SERVFAIL on
//!    AAAA only, a timeout) stops the list.
//! 6. **The bare name last**: after the list (finished or stopped), a name
//!    not yet asked as-is is asked as-is (RES_NOTLDQUERY is off by default,
//!    so this holds for single-label names too).
//! 7. **The result** when nothing was found: the as-is-first error if there
//!    was one, else "no data" if any candidate said so, else "try again" if
//!    any said SERVFAIL, else the last error.
//!
//! Deliberate simplifications, documented for whoever reads the figures:
//! the bench does not retry (glibc's `attempts:2`, `timeout:5`), so a
//! timeout here is glibc's final timeout; a timeout of both queries stops the
//! list (glibc then reads the rcode of a stale buffer, which is in practice
//! not SERVFAIL); no `HOSTALIASES`, no root domain in the list, no
//! ECONNREFUSED abort (the bench sees no ICMP over its connected sockets as
//! an error of a lookup, only as lost queries).
//!
//! Must not: do I/O or know names; it works on candidate positions.

/// A name a walk asks: the name as given, or the name plus search suffix `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    AsIs,
    Suffix(u8),
}

/// How one query of a pair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Answer { rcode: u8, ancount: u16 },
    Timeout,
}

const NOERROR: u8 = 0;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;

/// glibc's verdict on one A+AAAA pair (`__res_context_query`, rule 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairResult {
    /// NOERROR with records in at least one answer: the lookup is done.
    Found,
    /// `NO_DATA`: NOERROR without records (in the deciding answer).
    NoData,
    /// `HOST_NOT_FOUND`: NXDOMAIN.
    NotFound,
    /// `TRY_AGAIN`: SERVFAIL or no answer. `a_servfail` is what the search
    /// loop looks at (`hp->rcode == SERVFAIL` on the A answer buffer).
    TryAgain { a_servfail: bool },
    /// `NO_RECOVERY`: FORMERR, NOTIMP, REFUSED, anything else.
    NoRecovery,
}

impl PairResult {
    pub fn of(a: Reply, aaaa: Reply) -> PairResult {
        // A missing answer is replaced by the other one (`hp2 = hp`).
        let (a, aaaa) = match (a, aaaa) {
            (Reply::Timeout, Reply::Timeout) => return PairResult::TryAgain { a_servfail: false },
            (Reply::Timeout, x) | (x, Reply::Timeout) => (x, x),
            pair => pair,
        };
        let (Reply::Answer { rcode: ra, ancount: na }, Reply::Answer { rcode: rb, ancount: nb }) = (a, aaaa) else {
            unreachable!("timeouts handled above")
        };
        let has_data = |rcode: u8, n: u16| rcode == NOERROR && n > 0;
        if has_data(ra, na) || has_data(rb, nb) {
            return PairResult::Found;
        }
        match if ra == NOERROR { rb } else { ra } {
            NXDOMAIN => PairResult::NotFound,
            SERVFAIL => PairResult::TryAgain {
                a_servfail: ra == SERVFAIL,
            },
            NOERROR => PairResult::NoData,
            _ => PairResult::NoRecovery,
        }
    }
}

/// Why a lookup ended (glibc's `h_errno`, or success).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Found,
    NoData,
    NotFound,
    TryAgain,
    NoRecovery,
}

impl From<PairResult> for Outcome {
    fn from(r: PairResult) -> Outcome {
        match r {
            PairResult::Found => Outcome::Found,
            PairResult::NoData => Outcome::NoData,
            PairResult::NotFound => Outcome::NotFound,
            PairResult::TryAgain { .. } => Outcome::TryAgain,
            PairResult::NoRecovery => Outcome::NoRecovery,
        }
    }
}

/// What the walk wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Ask(Candidate),
    Done(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AsIsFirst,
    Search(u8),
    AsIsLast,
    Done,
}

/// One lookup's walk. Small and `Copy`: the load engine keeps one per
/// lookup in flight.
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    phase: Phase,
    suffixes: u8,
    trailing_dot: bool,
    tried_as_is: bool,
    /// The as-is-first error (`saved_herrno`).
    saved: Option<Outcome>,
    got_nodata: bool,
    got_servfail: bool,
}

impl Walk {
    /// Starts the walk of a name with `dots` dots (not counting a trailing
    /// one) and a search list of `suffixes` entries. Returns the first step,
    /// always an `Ask`.
    pub fn start(dots: usize, trailing_dot: bool, ndots: u8, suffixes: usize) -> (Walk, Step) {
        let mut w = Walk {
            phase: Phase::Done,
            suffixes: suffixes.min(u8::MAX as usize) as u8,
            trailing_dot,
            tried_as_is: false,
            saved: None,
            got_nodata: false,
            got_servfail: false,
        };
        // Rule 4 (and 3): glibc counts the trailing dot too, but a trailing
        // dot already means as-is.
        let step = if dots >= ndots as usize || trailing_dot {
            w.tried_as_is = true;
            w.phase = Phase::AsIsFirst;
            Step::Ask(Candidate::AsIs)
        } else {
            w.enter_search()
        };
        (w, step)
    }

    /// The search list if there is one (RES_DEFNAMES/RES_DNSRCH, both on by
    /// default), else the as-is query.
    fn enter_search(&mut self) -> Step {
        if self.suffixes > 0 && !self.trailing_dot {
            self.phase = Phase::Search(0);
            Step::Ask(Candidate::Suffix(0))
        } else {
            self.after_search(None)
        }
    }

    /// Rule 6 then rule 7.
    fn after_search(&mut self, last: Option<Outcome>) -> Step {
        if !self.tried_as_is {
            self.tried_as_is = true;
            self.phase = Phase::AsIsLast;
            return Step::Ask(Candidate::AsIs);
        }
        self.finish(last.unwrap_or(Outcome::NotFound))
    }

    fn finish(&mut self, last: Outcome) -> Step {
        self.phase = Phase::Done;
        let outcome = if let Some(saved) = self.saved {
            saved
        } else if self.got_nodata {
            Outcome::NoData
        } else if self.got_servfail {
            Outcome::TryAgain
        } else {
            last
        };
        Step::Done(outcome)
    }

    /// Feeds the verdict on the pair asked by the last `Ask`.
    pub fn next(&mut self, r: PairResult) -> Step {
        if r == PairResult::Found {
            self.phase = Phase::Done;
            return Step::Done(Outcome::Found);
        }
        match self.phase {
            Phase::AsIsFirst => {
                if self.trailing_dot {
                    self.phase = Phase::Done;
                    return Step::Done(r.into());
                }
                self.saved = Some(r.into());
                self.enter_search()
            }
            Phase::Search(i) => {
                let keep_going = match r {
                    PairResult::NoData => {
                        self.got_nodata = true;
                        true
                    }
                    PairResult::NotFound => true,
                    PairResult::TryAgain { a_servfail: true } => {
                        self.got_servfail = true;
                        true
                    }
                    _ => false,
                };
                if keep_going && i + 1 < self.suffixes {
                    self.phase = Phase::Search(i + 1);
                    Step::Ask(Candidate::Suffix(i + 1))
                } else {
                    self.after_search(Some(r.into()))
                }
            }
            Phase::AsIsLast => self.finish(r.into()),
            Phase::Done => Step::Done(r.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Candidate::{AsIs, Suffix};

    const NX: Reply = Reply::Answer {
        rcode: NXDOMAIN,
        ancount: 0,
    };
    const NODATA: Reply = Reply::Answer {
        rcode: NOERROR,
        ancount: 0,
    };
    const DATA: Reply = Reply::Answer {
        rcode: NOERROR,
        ancount: 1,
    };
    const SF: Reply = Reply::Answer {
        rcode: SERVFAIL,
        ancount: 0,
    };
    const REFUSED: Reply = Reply::Answer { rcode: 5, ancount: 0 };
    const TO: Reply = Reply::Timeout;

    /// Runs a walk against `answer(candidate) -> (A, AAAA)`; returns the
    /// candidates asked, in order, and the outcome.
    fn walk(
        dots: usize,
        trailing: bool,
        ndots: u8,
        n: usize,
        answer: impl Fn(Candidate) -> (Reply, Reply),
    ) -> (Vec<Candidate>, Outcome) {
        let (mut w, mut step) = Walk::start(dots, trailing, ndots, n);
        let mut asked = Vec::new();
        loop {
            match step {
                Step::Ask(c) => {
                    assert!(asked.len() < 20, "walk does not end");
                    asked.push(c);
                    let (a, aaaa) = answer(c);
                    step = w.next(PairResult::of(a, aaaa));
                }
                Step::Done(o) => return (asked, o),
            }
        }
    }

    const K8S: usize = 4; // <ns>.svc.cluster.local svc.cluster.local cluster.local <host>

    #[test]
    fn ndots_threshold() {
        // 4 dots < ndots:5: the search list first, then the bare name.
        let (asked, o) = walk(4, false, 5, K8S, |_| (NX, NX));
        assert_eq!(asked, [Suffix(0), Suffix(1), Suffix(2), Suffix(3), AsIs]);
        assert_eq!(o, Outcome::NotFound);
        // 5 dots: as-is first; then the list, without the bare name again.
        let (asked, o) = walk(5, false, 5, K8S, |_| (NX, NX));
        assert_eq!(asked, [AsIs, Suffix(0), Suffix(1), Suffix(2), Suffix(3)]);
        assert_eq!(o, Outcome::NotFound);
        // ndots:1 with one dot is already "enough dots".
        let (asked, _) = walk(1, false, 1, K8S, |c| if c == AsIs { (DATA, DATA) } else { (NX, NX) });
        assert_eq!(asked, [AsIs]);
    }

    #[test]
    fn absolute_first_when_dots_at_least_ndots() {
        let (asked, o) = walk(6, false, 5, K8S, |c| if c == AsIs { (DATA, NODATA) } else { (NX, NX) });
        assert_eq!((asked, o), (vec![AsIs], Outcome::Found));
        // Found only under a suffix: the as-is error is what would be
        // reported otherwise, but here the suffix wins.
        let (asked, o) = walk(
            5,
            false,
            5,
            K8S,
            |c| if c == Suffix(1) { (DATA, DATA) } else { (NX, NX) },
        );
        assert_eq!((asked, o), (vec![AsIs, Suffix(0), Suffix(1)], Outcome::Found));
        // Not found anywhere: the as-is-first error is the result (rule 7)
        // even though a later candidate said NODATA.
        let (_, o) = walk(5, false, 5, K8S, |c| {
            if c == Suffix(2) {
                (NODATA, NODATA)
            } else {
                (NX, NX)
            }
        });
        assert_eq!(o, Outcome::NotFound);
    }

    #[test]
    fn trailing_dot_means_as_is_only() {
        let (asked, o) = walk(2, true, 5, K8S, |_| (NX, NX));
        assert_eq!((asked, o), (vec![AsIs], Outcome::NotFound));
        let (asked, o) = walk(0, true, 5, K8S, |_| (SF, SF));
        assert_eq!((asked, o), (vec![AsIs], Outcome::TryAgain));
        let (asked, o) = walk(2, true, 5, K8S, |_| (DATA, NODATA));
        assert_eq!((asked, o), (vec![AsIs], Outcome::Found));
    }

    #[test]
    fn a_and_aaaa_pairing() {
        use PairResult::*;
        assert_eq!(PairResult::of(DATA, NODATA), Found);
        assert_eq!(PairResult::of(NODATA, DATA), Found);
        assert_eq!(PairResult::of(NX, DATA), Found);
        assert_eq!(PairResult::of(SF, DATA), Found);
        assert_eq!(PairResult::of(NODATA, NODATA), NoData);
        // The A answer decides unless it is NOERROR.
        assert_eq!(PairResult::of(NODATA, NX), NotFound);
        assert_eq!(PairResult::of(NX, NODATA), NotFound);
        assert_eq!(PairResult::of(NX, SF), NotFound);
        assert_eq!(PairResult::of(SF, NX), TryAgain { a_servfail: true });
        assert_eq!(PairResult::of(NODATA, SF), TryAgain { a_servfail: false });
        assert_eq!(PairResult::of(REFUSED, NX), NoRecovery);
        assert_eq!(PairResult::of(NODATA, REFUSED), NoRecovery);
        // One answer missing: the other stands for both.
        assert_eq!(PairResult::of(TO, DATA), Found);
        assert_eq!(PairResult::of(NX, TO), NotFound);
        assert_eq!(PairResult::of(TO, TO), TryAgain { a_servfail: false });
    }

    #[test]
    fn stops_at_first_existing_answer() {
        // `svc.ns1` from a pod in ns0: ns1.ns0.svc… is NXDOMAIN, ns1.svc… exists.
        let (asked, o) = walk(
            1,
            false,
            5,
            K8S,
            |c| if c == Suffix(1) { (DATA, NODATA) } else { (NX, NX) },
        );
        assert_eq!((asked, o), (vec![Suffix(0), Suffix(1)], Outcome::Found));
        // An external name: every suffix NXDOMAIN, the bare name answers.
        let (asked, o) = walk(2, false, 5, K8S, |c| if c == AsIs { (DATA, DATA) } else { (NX, NX) });
        assert_eq!(
            (asked, o),
            (vec![Suffix(0), Suffix(1), Suffix(2), Suffix(3), AsIs], Outcome::Found)
        );
    }

    #[test]
    fn nodata_keeps_searching_and_is_reported() {
        let (asked, o) = walk(0, false, 5, K8S, |c| {
            if c == Suffix(0) {
                (NODATA, NODATA)
            } else {
                (NX, NX)
            }
        });
        assert_eq!(asked, [Suffix(0), Suffix(1), Suffix(2), Suffix(3), AsIs]);
        assert_eq!(o, Outcome::NoData);
    }

    #[test]
    fn servfail_on_a_keeps_searching_other_errors_stop_the_list() {
        let (asked, o) = walk(1, false, 5, K8S, |c| if c == Suffix(0) { (SF, SF) } else { (NX, NX) });
        assert_eq!(asked, [Suffix(0), Suffix(1), Suffix(2), Suffix(3), AsIs]);
        assert_eq!(o, Outcome::TryAgain);
        // SERVFAIL on AAAA only stops the list; the bare name is still asked.
        let (asked, _) = walk(
            1,
            false,
            5,
            K8S,
            |c| if c == Suffix(0) { (NODATA, SF) } else { (NX, NX) },
        );
        assert_eq!(asked, [Suffix(0), AsIs]);
        let (asked, o) = walk(1, false, 5, K8S, |c| {
            if c == Suffix(1) {
                (REFUSED, REFUSED)
            } else {
                (NX, NX)
            }
        });
        assert_eq!(asked, [Suffix(0), Suffix(1), AsIs]);
        assert_eq!(o, Outcome::NotFound);
        let (asked, o) = walk(
            1,
            false,
            5,
            K8S,
            |c| if c == Suffix(0) { (TO, TO) } else { (DATA, DATA) },
        );
        assert_eq!((asked, o), (vec![Suffix(0), AsIs], Outcome::Found));
    }

    #[test]
    fn no_search_list_asks_as_is() {
        let (asked, o) = walk(0, false, 5, 0, |_| (NX, NX));
        assert_eq!((asked, o), (vec![AsIs], Outcome::NotFound));
    }
}
