//! What starts a sync: [`Trigger`]s, coalesced in [`Triggers`] while a sync runs. Fired by the
//! watch loop ([`crate::watch`]) and the webhook listener ([`crate::webhook`]).

use std::sync::Mutex;

use tokio::sync::Notify;

/// What can start a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The watcher started.
    Start,
    /// A ref of the local repository or a file of the folder changed.
    Change,
    /// The poll interval of a remote repository passed.
    Poll,
    /// A signed webhook arrived.
    Webhook,
    /// `--self-heal` seconds passed without a sync.
    SelfHeal,
    /// The backoff after a failure passed.
    Retry,
}

impl Trigger {
    const ALL: [Trigger; 6] = [
        Trigger::Start,
        Trigger::Change,
        Trigger::Poll,
        Trigger::Webhook,
        Trigger::SelfHeal,
        Trigger::Retry,
    ];

    fn bit(self) -> u8 {
        match self {
            Trigger::Start => 1,
            Trigger::Change => 2,
            Trigger::Poll => 4,
            Trigger::Webhook => 8,
            Trigger::SelfHeal => 16,
            Trigger::Retry => 32,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Change => "change",
            Trigger::Poll => "poll",
            Trigger::Webhook => "webhook",
            Trigger::SelfHeal => "self-heal",
            Trigger::Retry => "retry",
        }
    }

    /// Whether this syncs even when the commit has not moved.
    fn forces(self) -> bool {
        !matches!(self, Trigger::Change | Trigger::Poll)
    }
}

/// A set of triggers that coalesced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reasons(u8);

impl Reasons {
    pub(crate) fn of(trigger: Trigger) -> Reasons {
        Reasons(trigger.bit())
    }

    pub(crate) fn union(self, other: Reasons) -> Reasons {
        Reasons(self.0 | other.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn contains(self, trigger: Trigger) -> bool {
        self.0 & trigger.bit() != 0
    }

    /// Whether the set syncs even when the commit has not moved.
    pub(crate) fn forced(self) -> bool {
        Trigger::ALL
            .iter()
            .any(|trigger| trigger.forces() && self.contains(*trigger))
    }

    pub(crate) fn describe(self) -> String {
        Trigger::ALL
            .iter()
            .filter(|trigger| self.contains(**trigger))
            .map(|trigger| trigger.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Pending triggers: firing sets a flag, so triggers that arrive while the loop is busy
/// coalesce into one.
#[derive(Debug, Default)]
pub(crate) struct Triggers {
    pending: Mutex<Reasons>,
    notify: Notify,
}

impl Triggers {
    /// Asks for a sync.
    pub(crate) fn fire(&self, trigger: Trigger) {
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *pending = pending.union(Reasons::of(trigger));
        }
        self.notify.notify_one();
    }

    /// Takes every pending trigger (none when nothing is pending).
    pub(crate) fn take(&self) -> Reasons {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Waits for at least one trigger and takes all pending ones. Cancel-safe: nothing is
    /// taken unless this returns.
    pub(crate) async fn next(&self) -> Reasons {
        loop {
            let reasons = self.take();
            if !reasons.is_empty() {
                return reasons;
            }
            // A fire between `take` and here leaves a permit, so this does not miss it.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn triggers_coalesce_into_one_batch() {
        let triggers = Triggers::default();
        assert_eq!(triggers.next().now_or_never(), None, "nothing is pending");
        for _ in 0..10 {
            triggers.fire(Trigger::Change);
        }
        triggers.fire(Trigger::Webhook);
        let batch = triggers.next().now_or_never().expect("a batch is pending");
        assert!(batch.contains(Trigger::Change) && batch.contains(Trigger::Webhook));
        assert!(!batch.contains(Trigger::Poll));
        assert_eq!(batch.describe(), "change, webhook");
        // Eleven fires, one batch: the next wait finds nothing (a stale permit is absorbed).
        assert_eq!(triggers.next().now_or_never(), None);
    }

    #[test]
    fn only_changes_and_polls_check_the_commit() {
        assert!(!Reasons::of(Trigger::Change).forced());
        assert!(!Reasons::of(Trigger::Poll)
            .union(Reasons::of(Trigger::Change))
            .forced());
        for trigger in [
            Trigger::Start,
            Trigger::Webhook,
            Trigger::SelfHeal,
            Trigger::Retry,
        ] {
            assert!(Reasons::of(trigger).forced(), "{trigger:?}");
            assert!(Reasons::of(Trigger::Change)
                .union(Reasons::of(trigger))
                .forced());
        }
    }
}
