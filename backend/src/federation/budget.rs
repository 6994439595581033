//! How much of downstream clusters' answers the gateway holds (issue 14, finding 5): at most
//! [`REQUEST_LIMIT`] for one federated request (every page of every cluster it asks) or one
//! replicator's listing, and at most [`DOWNSTREAM_BUDGET`] for all of them at once, so that
//! many concurrent requests cannot multiply the bound of one.
//!
//! A request takes an [`Allowance`] from the gateway's [`Budget`]; each part of it (one
//! cluster's listing, one answer) reads into a [`Share`] of that allowance, which charges the
//! bytes as they arrive: first against the request's own limit, then against the budget (a
//! semaphore counted in KiB, waited for at most [`BUDGET_WAIT`]). A share that is dropped
//! gives its bytes back (a failed cluster's rows are thrown away, so they no longer count); a
//! share that is [kept](Share::keep) stays charged until the allowance itself is dropped,
//! which the view does once its answer has been written out.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most bytes of downstream answers the gateway holds at once, over every federated
/// request, proxied answer and replicator listing: 256 MiB, four requests at their
/// [`REQUEST_LIMIT`] (a federated request's rows are held once more while its answer is
/// written, so the view's worst case is about twice this).
pub(crate) const DOWNSTREAM_BUDGET: usize = 256 * MIB;

/// The most bytes one federated request reads from downstream clusters, over all its pages
/// and clusters (and the most one replicator listing reads): 64 MiB, about 100,000 events of
/// a typical 600 bytes. A cluster whose answers would go over it is reported as failed; the
/// others keep their rows.
pub(crate) const REQUEST_LIMIT: usize = 64 * MIB;

/// How long a request waits for room in a full [`DOWNSTREAM_BUDGET`] before the cluster it
/// reads is reported as failed (5 s: well inside the view's 30-second listing timeout).
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// What one row of a listing costs besides its bytes, charged with them, so that a listing of
/// tiny rows cannot hold many times its bytes: a row kept as its JSON text
/// (`Box<RawValue>`) takes 48 bytes more than the text (measured: 5 million `{}` rows of 3
/// bytes took 234 MiB), and its entry in the federated answer about 60 more.
pub(crate) const ROW_COST: usize = 128;

/// A mebibyte.
pub(crate) const MIB: usize = 1024 * 1024;

/// A KiB: the budget's unit.
const KIB: usize = 1024;

/// Which bound a read went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// One answer is larger than this many bytes ([`super::client::RESPONSE_LIMIT`]).
    Response(usize),
    /// A listing has more pages than this ([`super::client::PAGES_LIMIT`]).
    Pages(usize),
    /// The request's answers together are larger than this many bytes ([`REQUEST_LIMIT`]).
    Request(usize),
    /// The gateway's budget of this many bytes stayed full for [`BUDGET_WAIT`]
    /// ([`DOWNSTREAM_BUDGET`]); the cluster may be fine, and a retry may help.
    Budget(usize),
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::Response(limit) => write!(
                f,
                "the answer is over the limit of {} for one downstream answer",
                Size(*limit)
            ),
            Exceeded::Pages(limit) => {
                write!(f, "the listing is over the limit of {limit} pages")
            }
            Exceeded::Request(limit) => write!(
                f,
                "the downstream answers of this request are over its limit of {}",
                Size(*limit)
            ),
            Exceeded::Budget(limit) => write!(
                f,
                "the gateway holds its whole budget of {} of downstream answers and none was \
                 freed within {}s",
                Size(*limit),
                BUDGET_WAIT.as_secs()
            ),
        }
    }
}

/// A byte count as people read it: `8 MiB`, `600 KiB`, `100 bytes`.
struct Size(usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bytes if bytes >= MIB && bytes % MIB == 0 => write!(f, "{} MiB", bytes / MIB),
            bytes if bytes >= KIB && bytes % KIB == 0 => write!(f, "{} KiB", bytes / KIB),
            bytes => write!(f, "{bytes} bytes"),
        }
    }
}

// === impl Budget ===

/// The gateway's budget of downstream bytes held at once; cheap to clone (one semaphore).
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    kib: Arc<Semaphore>,
    bytes: usize,
}

impl Budget {
    /// A budget of `bytes` (rounded down to KiB).
    pub(crate) fn new(bytes: usize) -> Budget {
        Budget {
            kib: Arc::new(Semaphore::new(bytes / KIB)),
            bytes,
        }
    }

    /// An allowance of at most `limit` bytes for one request.
    pub(crate) fn allowance(&self, limit: usize) -> Allowance {
        Allowance(Arc::new(AllowanceInner {
            budget: self.clone(),
            limit,
            used: AtomicUsize::new(0),
            kept: Mutex::new(Vec::new()),
        }))
    }

    /// KiB of the budget nobody holds now.
    #[cfg(test)]
    pub(crate) fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

// === impl Allowance ===

/// What one request may read, shared by all its parts; dropping it frees what its kept
/// shares hold.
#[derive(Debug, Clone)]
pub(crate) struct Allowance(Arc<AllowanceInner>);

#[derive(Debug)]
struct AllowanceInner {
    budget: Budget,
    limit: usize,
    /// Bytes charged by the shares alive or kept.
    used: AtomicUsize,
    /// The budget held by kept shares.
    kept: Mutex<Vec<OwnedSemaphorePermit>>,
}

impl Allowance {
    /// A new, empty share of this allowance.
    pub(crate) fn share(&self) -> Share {
        Share::empty(Arc::clone(&self.0))
    }
}

// === impl Share ===

/// The bytes one part of a request holds; given back when dropped, unless kept.
#[derive(Debug)]
pub(crate) struct Share {
    allowance: Arc<AllowanceInner>,
    bytes: usize,
    /// The budget this share holds: `bytes` rounded up to KiB.
    permit: Option<OwnedSemaphorePermit>,
}

impl Share {
    fn empty(allowance: Arc<AllowanceInner>) -> Share {
        Share {
            allowance,
            bytes: 0,
            permit: None,
        }
    }

    /// Charges `bytes` more: against the request's limit (refused at once when it would go
    /// over), then against the gateway's budget (waiting up to [`BUDGET_WAIT`] for room).
    ///
    /// # Errors
    /// [`Exceeded::Request`] or [`Exceeded::Budget`]; nothing is charged then.
    ///
    /// # Caveats
    /// A share that waits for room keeps what it holds, so two requests that fill the budget
    /// between them wait each other out: both fail after [`BUDGET_WAIT`], neither hangs. Within
    /// one request, the cluster whose answer would go over [`REQUEST_LIMIT`] is the one that
    /// fails, even when another cluster holds most of it.
    pub(crate) async fn charge(&mut self, bytes: usize) -> Result<(), Exceeded> {
        let inner = &self.allowance;
        let limit = inner.limit;
        inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map_err(|_| Exceeded::Request(limit))?;
        let held_kib = self
            .permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        let needed_kib = (self.bytes + bytes).div_ceil(KIB).saturating_sub(held_kib);
        if needed_kib > 0 {
            let permit = match u32::try_from(needed_kib) {
                Ok(kib) => acquire(&inner.budget.kib, kib).await,
                Err(_) => None,
            };
            let Some(permit) = permit else {
                inner.used.fetch_sub(bytes, Ordering::AcqRel);
                return Err(Exceeded::Budget(inner.budget.bytes));
            };
            match &mut self.permit {
                Some(held) => held.merge(permit),
                none => *none = Some(permit),
            }
        }
        self.bytes += bytes;
        Ok(())
    }

    /// A new, empty share of the same allowance.
    pub(crate) fn sibling(&self) -> Share {
        Share::empty(Arc::clone(&self.allowance))
    }

    /// Takes over what `other` (a share of the same allowance) holds.
    pub(crate) fn absorb(&mut self, mut other: Share) {
        debug_assert!(Arc::ptr_eq(&self.allowance, &other.allowance));
        self.bytes += std::mem::take(&mut other.bytes);
        match (&mut self.permit, other.permit.take()) {
            (Some(held), Some(permit)) => held.merge(permit),
            (none @ None, permit) => *none = permit,
            (Some(_), None) => {}
        }
    }

    /// Keeps this share charged until the allowance is dropped.
    pub(crate) fn keep(mut self) {
        self.bytes = 0;
        if let Some(permit) = self.permit.take() {
            self.allowance.kept.lock().push(permit);
        }
    }

    /// The bytes this share holds.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.allowance.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// `kib` permits of the budget, waiting up to [`BUDGET_WAIT`] when it has not that many free;
/// `None` when none came.
async fn acquire(budget: &Arc<Semaphore>, kib: u32) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(budget).try_acquire_many_owned(kib) {
        return Some(permit);
    }
    // Closed never happens (the budget's semaphore is never closed); a timeout is a full budget.
    tokio::time::timeout(BUDGET_WAIT, Arc::clone(budget).acquire_many_owned(kib))
        .await
        .ok()
        .and_then(Result::ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_stays_within_its_limit_and_a_dropped_share_gives_back() {
        let budget = Budget::new(MIB);
        let allowance = budget.allowance(10 * KIB);
        let mut first = allowance.share();
        first.charge(6 * KIB).await.unwrap();
        let mut second = allowance.share();
        assert_eq!(
            second.charge(5 * KIB).await,
            Err(Exceeded::Request(10 * KIB))
        );
        second.charge(KIB + 1).await.unwrap();
        // Each share rounds up to whole KiB of the budget.
        assert_eq!(budget.available_kib(), 1024 - 6 - 2);
        drop(second);
        assert_eq!(budget.available_kib(), 1024 - 6);
        let mut third = allowance.share();
        third.charge(4 * KIB).await.unwrap();
        first.absorb(third);
        assert_eq!(first.bytes(), 10 * KIB);
        first.keep();
        assert_eq!(budget.available_kib(), 1024 - 10, "kept");
        assert_eq!(
            allowance.share().charge(1).await,
            Err(Exceeded::Request(10 * KIB))
        );
        drop(allowance);
        assert_eq!(budget.available_kib(), 1024, "freed with the allowance");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_is_waited_for_then_refused() {
        let budget = Budget::new(8 * KIB);
        let holder = budget.allowance(MIB);
        let mut held = holder.share();
        held.charge(6 * KIB).await.unwrap();
        let other = budget.allowance(MIB);
        let mut waiting = other.share();
        let started = tokio::time::Instant::now();
        assert_eq!(
            waiting.charge(4 * KIB).await,
            Err(Exceeded::Budget(8 * KIB))
        );
        assert_eq!(started.elapsed(), BUDGET_WAIT);
        assert_eq!(waiting.bytes(), 0, "nothing charged");
        // Room freed while waiting is taken.
        let freeing = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(held);
        };
        let (charged, ()) = tokio::join!(waiting.charge(4 * KIB), freeing);
        assert_eq!(charged, Ok(()));
        assert_eq!(budget.available_kib(), 4);
    }

    #[test]
    fn bounds_read_as_sizes() {
        assert_eq!(
            Exceeded::Response(8 * MIB).to_string(),
            "the answer is over the limit of 8 MiB for one downstream answer"
        );
        assert_eq!(
            Exceeded::Request(64 * MIB).to_string(),
            "the downstream answers of this request are over its limit of 64 MiB"
        );
        assert_eq!(
            Exceeded::Pages(200).to_string(),
            "the listing is over the limit of 200 pages"
        );
        assert!(Exceeded::Budget(256 * MIB)
            .to_string()
            .contains("budget of 256 MiB"));
        assert_eq!(Size(1536).to_string(), "1536 bytes");
        assert_eq!(Size(3 * KIB).to_string(), "3 KiB");
    }
}
