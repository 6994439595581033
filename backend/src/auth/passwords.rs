//! Password checks that an anonymous client cannot turn into a denial of service or an oracle.
//!
//! - argon2 runs on hashing threads of its own, one per core but one (at least one), so the
//!   async workers that serve `/health`, agents and every other request are never busy
//!   hashing; a check that waits more than [`QUEUE_TIMEOUT`] for a worker is refused (503)
//!   instead of piling up. The threads live as long as the checker: argon2 takes 19 MiB per
//!   hash, and on tokio's blocking pool, whose threads come and go, each new thread got a
//!   malloc arena of its own that kept its freed 19 MiB (the soak benchmark's RSS grew by
//!   hundreds of MiB under wrong-password logins). Here that memory is at most 19 MiB per
//!   hashing thread.
//! - Failed logins slow down (an attempt counts as failed until it succeeds, so attempts made
//!   at once are throttled too): after [`FREE_FAILURES`] failures within [`FAILURE_WINDOW`], each
//!   further attempt from the same address, or for the same user, waits before its password is
//!   even checked: 250 ms doubling, at most [`MAX_DELAY_PER_ADDRESS`] for an address and
//!   [`MAX_DELAY_PER_USER`] for a user. Never a lockout: an attacker who fails for someone else's
//!   name delays that user's logins by at most 2 s, and a success clears the user's count.
//!   At most [`MAX_TRACKED`] addresses and as many users are remembered (oldest dropped).
//! - An unknown or disabled user is checked against a dummy hash made at start, so the answer
//!   takes as long as for a real user and does not tell which users exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::auth::{self, AuthError};

/// The longest a password check waits for a hashing worker.
pub(crate) const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed login is remembered.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures within the window that cost nothing.
pub(crate) const FREE_FAILURES: u32 = 3;
/// The longest delay before an address's next attempt.
pub(crate) const MAX_DELAY_PER_ADDRESS: Duration = Duration::from_secs(10);
/// The longest delay before a user's next attempt (from anywhere).
pub(crate) const MAX_DELAY_PER_USER: Duration = Duration::from_secs(2);
/// The most addresses, and the most user names, whose failures are remembered.
pub(crate) const MAX_TRACKED: usize = 10_000;

/// Why a password could not be checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// Every hashing worker stayed busy for [`QUEUE_TIMEOUT`]; retrying later helps.
    #[error("too many password checks in progress; try again")]
    Busy,
    /// Hashing failed (an internal fault); a retry does not help.
    #[error(transparent)]
    Hash(#[from] AuthError),
}

/// The password checker shared by `/auth`, `/auth/test` and password changes.
#[derive(Debug)]
pub(crate) struct Passwords {
    workers: Arc<Semaphore>,
    /// Hands work to the hashing threads; as many places as threads (a permit of `workers`
    /// is taken first, so sending never waits).
    jobs: std::sync::mpsc::SyncSender<Job>,
    dummy_hash: String,
    failures: Mutex<Failures>,
}

/// Work for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, Default)]
struct Failures {
    by_address: HashMap<IpAddr, Record>,
    by_user: HashMap<String, Record>,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    count: u32,
    last: Instant,
}

impl Passwords {
    /// A checker with one hashing worker fewer than the machine has cores (at least one).
    ///
    /// # Errors
    /// When the dummy hash cannot be made (an internal fault).
    pub(crate) fn new() -> Result<Passwords, AuthError> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Passwords::with_workers(cores.saturating_sub(1).max(1))
    }

    /// A checker with `n_workers` hashing workers.
    ///
    /// # Errors
    /// When the dummy hash cannot be made (an internal fault).
    pub(crate) fn with_workers(n_workers: usize) -> Result<Passwords, AuthError> {
        let n_workers = n_workers.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(n_workers);
        let queue = Arc::new(Mutex::new(queue));
        for idx in 0..n_workers {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("password-hash-{idx}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job; the threads end
                    // when the checker (the sender) is dropped.
                    let job = queue.lock().recv();
                    let Ok(job) = job else { return };
                    // A panicking job loses its answer (the caller sees `HashFailed`), not
                    // the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })
                .map_err(|_| AuthError::HashFailed)?;
        }
        Ok(Passwords {
            workers: Arc::new(Semaphore::new(n_workers)),
            jobs,
            dummy_hash: auth::hash_password(&auth::random_token(16))?,
            failures: Mutex::new(Failures::default()),
        })
    }

    /// Checks a login: waits out the throttle for `address` and `username`, then compares
    /// `password` with `hash` (or with the dummy hash when the user is unknown or disabled,
    /// `hash` = `None`), and records the outcome.
    ///
    /// # Errors
    /// [`PasswordError::Busy`] when no worker was free in time.
    pub(crate) async fn check_login(
        &self,
        address: Option<IpAddr>,
        username: &str,
        password: &str,
        hash: Option<&str>,
    ) -> Result<bool, PasswordError> {
        // The attempt counts as a failure from the start, so that many attempts at once are
        // throttled as if they came one after another; a success takes it back.
        let now = Instant::now();
        let delay = self.delay(address, username, now);
        self.record(address, username, false, now);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let matched = self
            .verify(password, hash.unwrap_or(&self.dummy_hash))
            .await?
            && hash.is_some();
        if matched {
            self.record(address, username, true, Instant::now());
        }
        Ok(matched)
    }

    /// Compares `password` with a PHC `hash` on a hashing thread (no throttle; for callers
    /// that are already authenticated, as a password change is).
    ///
    /// # Errors
    /// [`PasswordError::Busy`] when no worker was free in time.
    pub(crate) async fn verify(&self, password: &str, hash: &str) -> Result<bool, PasswordError> {
        let (password, hash) = (password.to_owned(), hash.to_owned());
        self.on_worker(move || Ok(auth::verify_password(&password, &hash)))
            .await
    }

    /// Hashes a new password on a hashing thread.
    ///
    /// # Errors
    /// [`PasswordError::Busy`], or [`PasswordError::Hash`] for an internal fault.
    pub(crate) async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        self.on_worker(move || auth::hash_password(&password).map_err(PasswordError::from))
            .await
    }

    async fn on_worker<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.workers).acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .expect("the workers' semaphore is never closed");
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            let _ = answer.send(work());
        });
        // Never full: a permit is held for each job queued or running.
        self.jobs
            .try_send(job)
            .map_err(|_| PasswordError::Hash(AuthError::HashFailed))?;
        answered
            .await
            .map_err(|_| PasswordError::Hash(AuthError::HashFailed))?
    }

    /// The wait before the next attempt from `address` for `username`.
    fn delay(&self, address: Option<IpAddr>, username: &str, now: Instant) -> Duration {
        let failures = self.failures.lock();
        let count = |record: Option<&Record>| {
            record
                .filter(|record| now.saturating_duration_since(record.last) < FAILURE_WINDOW)
                .map_or(0, |record| record.count)
        };
        let by_address = address.map_or(0, |address| count(failures.by_address.get(&address)));
        let by_user = count(failures.by_user.get(username));
        backoff(by_address, MAX_DELAY_PER_ADDRESS).max(backoff(by_user, MAX_DELAY_PER_USER))
    }

    /// Counts a failed attempt, or takes back the attempt of a success (and forgets the user's
    /// failures).
    fn record(&self, address: Option<IpAddr>, username: &str, matched: bool, now: Instant) {
        let mut failures = self.failures.lock();
        if matched {
            failures.by_user.remove(username);
            if let Some(record) = address.and_then(|address| failures.by_address.get_mut(&address))
            {
                record.count = record.count.saturating_sub(1);
            }
            return;
        }
        if let Some(address) = address {
            bump(&mut failures.by_address, address, now);
        }
        bump(&mut failures.by_user, username.to_owned(), now);
    }
}

/// 250 ms doubling per failure past [`FREE_FAILURES`], at most `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let Some(over) = failures.checked_sub(FREE_FAILURES) else {
        return Duration::ZERO;
    };
    if over == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
    Duration::from_millis(250).saturating_mul(factor).min(max)
}

/// Counts a failure for `key`, restarting a count older than the window, and keeps the map
/// within [`MAX_TRACKED`] by dropping expired records, then the oldest.
fn bump<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Record>, key: K, now: Instant) {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, record| now.saturating_duration_since(record.last) < FAILURE_WINDOW);
        if map.len() >= MAX_TRACKED {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, record)| record.last)
                .map(|(key, _)| key.clone())
            {
                map.remove(&oldest);
            }
        }
    }
    let record = map.entry(key).or_insert(Record {
        count: 0,
        last: now,
    });
    if now.saturating_duration_since(record.last) >= FAILURE_WINDOW {
        record.count = 0;
    }
    record.count = record.count.saturating_add(1);
    record.last = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_per_address_and_per_user_and_is_capped() {
        assert_eq!(backoff(0, MAX_DELAY_PER_ADDRESS), Duration::ZERO);
        assert_eq!(backoff(3, MAX_DELAY_PER_ADDRESS), Duration::ZERO);
        assert_eq!(
            backoff(4, MAX_DELAY_PER_ADDRESS),
            Duration::from_millis(250)
        );
        assert_eq!(
            backoff(5, MAX_DELAY_PER_ADDRESS),
            Duration::from_millis(500)
        );
        assert_eq!(backoff(40, MAX_DELAY_PER_ADDRESS), MAX_DELAY_PER_ADDRESS);
        assert_eq!(backoff(40, MAX_DELAY_PER_USER), MAX_DELAY_PER_USER);

        let passwords = Passwords::with_workers(1).unwrap();
        let start = Instant::now();
        let attacker: IpAddr = "10.0.0.9".parse().unwrap();
        let user: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            passwords.record(Some(attacker), "alice", false, start);
        }
        // The attacker's address waits long; alice, from elsewhere, waits at most 2 s.
        assert!(passwords.delay(Some(attacker), "bob", start) >= Duration::from_secs(10));
        assert_eq!(
            passwords.delay(Some(user), "alice", start),
            MAX_DELAY_PER_USER
        );
        assert_eq!(passwords.delay(Some(user), "bob", start), Duration::ZERO);
        // A success clears the user's count; the window forgets the address's.
        passwords.record(Some(user), "alice", true, start);
        assert_eq!(passwords.delay(Some(user), "alice", start), Duration::ZERO);
        let later = start + FAILURE_WINDOW;
        assert_eq!(
            passwords.delay(Some(attacker), "bob", later),
            Duration::ZERO
        );
    }

    #[test]
    fn remembered_failures_are_bounded() {
        let passwords = Passwords::with_workers(1).unwrap();
        let start = Instant::now();
        for idx in 0..(MAX_TRACKED + 50) {
            let address = IpAddr::from(u32::try_from(idx).unwrap().to_be_bytes());
            passwords.record(Some(address), &format!("user-{idx}"), false, start);
        }
        let failures = passwords.failures.lock();
        assert_eq!(failures.by_address.len(), MAX_TRACKED);
        assert_eq!(failures.by_user.len(), MAX_TRACKED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_users_cost_a_hash_and_never_match() {
        let passwords = Passwords::with_workers(1).unwrap();
        let hash = auth::hash_password("right-password").unwrap();
        assert!(passwords
            .check_login(None, "alice", "right-password", Some(&hash))
            .await
            .unwrap());
        assert!(!passwords
            .check_login(None, "alice", "wrong", Some(&hash))
            .await
            .unwrap());
        // The dummy hash's own password does not log in a user that does not exist.
        assert!(!passwords
            .check_login(None, "nobody", "anything", None)
            .await
            .unwrap());
    }
}
