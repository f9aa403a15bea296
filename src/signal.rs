//! One-way signals between tasks: the daemon is stopping, connections must be cut, a fill
//! pass is cancelled.
//!
//! Like mini-redis's `Shutdown`, a [`Signal`] is something every task asks the same way
//! ([`Signal::is_raised`] to look, [`Signal::raised`] to wait), and once raised it stays
//! raised, so a task that subscribes late still sees it. The kind is part of the type, so a
//! function that wants the stop signal cannot be handed the cut one by mistake.

use std::marker::PhantomData;

use tokio::sync::watch;

/// The daemon is stopping: stop accepting, let in-flight work finish, then end.
#[derive(Debug)]
pub enum Stop {}

/// The shutdown timeout ran out: drop whatever is still open, now.
#[derive(Debug)]
pub enum Cut {}

/// A fill pass is ending: in-flight transfers stop where they are and keep their progress.
#[derive(Debug)]
pub enum Cancel {}

/// The daemon-wide stop signal, as every long-running task receives it.
pub type Shutdown = Signal<Stop>;

/// Raises a signal; held by whoever decides (the daemon, the fill pass).
#[derive(Debug)]
pub struct Trigger<K> {
    sender: watch::Sender<bool>,
    kind: PhantomData<fn() -> K>,
}

/// Observes a signal; cloned into every task that must react to it.
#[derive(Debug)]
pub struct Signal<K> {
    receiver: watch::Receiver<bool>,
    /// Raised when this holder was made, or seen raised since: the value only ever goes from
    /// false to true, so after that, any new version (or a dropped trigger) means raised,
    /// and [`Signal::is_raised`] reads one atomic instead of locking the value (it is asked
    /// on every request).
    seen_raised: bool,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Signal<K> {
    fn clone(&self) -> Self {
        let receiver = self.receiver.clone();
        let seen_raised = *receiver.borrow();
        Signal {
            seen_raised,
            receiver,
            kind: PhantomData,
        }
    }
}

/// A new, unraised signal and the trigger that raises it.
pub fn channel<K>() -> (Trigger<K>, Signal<K>) {
    let (sender, receiver) = watch::channel(false);
    (
        Trigger {
            sender,
            kind: PhantomData,
        },
        Signal {
            receiver,
            seen_raised: false,
            kind: PhantomData,
        },
    )
}

impl<K> Trigger<K> {
    /// Raises the signal for every holder, now and later. Raising twice is harmless.
    pub fn raise(&self) {
        self.sender.send_replace(true);
    }
}

impl<K> Signal<K> {
    /// Whether the signal has been raised, or its trigger dropped: with nobody left to
    /// decide, every holder winds down rather than wait forever (as with mini-redis's
    /// closed broadcast channel).
    pub fn is_raised(&self) -> bool {
        // Only `raised` marks a version seen, and it records that it saw the raise; so a
        // version this holder has not seen is the raise.
        self.seen_raised || !matches!(self.receiver.has_changed(), Ok(false))
    }

    /// Resolves once the signal is raised or its trigger dropped (at once if it already is).
    pub async fn raised(&mut self) {
        let _ = self.receiver.wait_for(|raised| *raised).await;
        self.seen_raised = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raised_signal_stays_raised_for_late_subscribers() {
        let (trigger, mut early) = channel::<Stop>();
        assert!(!early.is_raised());
        trigger.raise();
        early.raised().await;
        assert!(early.is_raised(), "still raised once waited for");
        let mut late = early.clone();
        assert!(late.is_raised());
        late.raised().await;
    }

    #[tokio::test]
    async fn a_wait_given_up_before_the_raise_does_not_hide_it() {
        let (trigger, mut signal) = channel::<Stop>();
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), signal.raised());
        assert!(gave_up.await.is_err());
        assert!(!signal.is_raised());
        trigger.raise();
        assert!(signal.is_raised());
        trigger.raise();
        assert!(signal.is_raised(), "raised twice is still raised");
        assert!(signal.clone().is_raised());
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_raised() {
        let (trigger, mut signal) = channel::<Cancel>();
        assert!(!signal.is_raised());
        drop(trigger);
        assert!(signal.is_raised());
        signal.raised().await;
    }
}
