//! In-flight acknowledgements, in commit order; advances the flushed LSN.
//!
//! Every published message enters the window with a sequence number; every transaction end
//! (and every idle keepalive position) enters as a checkpoint carrying an LSN. Acks may arrive
//! in any order and are marked against their sequence number; the window releases in insertion
//! order, so a checkpoint comes out only after every message pushed before it has been
//! acknowledged — which is exactly when its LSN may be reported to PostgreSQL as flushed.
//!
//! The window is plain data — no future per message: JetStream's acks arrive on one inbox
//! subscription (`crate::publish::AckReplies`) and are matched here by number. That was a
//! quarter of the publisher's CPU when each message had its own boxed ack future, oneshot
//! channel and timer.
//!
//! The window is bounded ([`AckWindow::is_full`]); the publish loop stops taking new messages
//! while it is full, so memory stays bounded however large a transaction is.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// Ordered acknowledgements with checkpoints; `T` is what the caller keeps per message until
/// it is released (its metrics).
pub struct AckWindow<T> {
    /// Messages from `base` on, oldest first: `Some` until released, acked or not.
    messages: VecDeque<Slot<T>>,
    /// The sequence number of `messages.front()`.
    base: u64,
    /// `(seq, lsn)`: `lsn` is flushed once every message numbered below `seq` is released.
    checkpoints: VecDeque<(u64, Lsn)>,
    capacity: usize,
}

struct Slot<T> {
    acked: bool,
    data: T,
}

impl<T> AckWindow<T> {
    /// A window holding at most `capacity` unreleased messages (checkpoints do not count).
    pub fn new(capacity: usize) -> Self {
        AckWindow {
            messages: VecDeque::new(),
            base: 0,
            checkpoints: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.base + self.messages.len() as u64
    }

    /// Track one sent message; returns its sequence number.
    pub fn push_message(&mut self, data: T) -> u64 {
        let seq = self.next_seq();
        self.messages.push_back(Slot { acked: false, data });
        seq
    }

    /// `lsn` becomes flushed once everything pushed before it is acknowledged.
    pub fn push_checkpoint(&mut self, lsn: Lsn) {
        let seq = self.next_seq();
        self.checkpoints.push_back((seq, lsn));
    }

    /// Mark message `seq` acknowledged. Returns false for a number that is not in flight
    /// (released already, or never sent): a stray or repeated reply, which changes nothing.
    pub fn ack(&mut self, seq: u64) -> bool {
        let Some(index) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        match self.messages.get_mut(index) {
            Some(slot) if !slot.acked => {
                slot.acked = true;
                true
            }
            _ => false,
        }
    }

    /// What is kept for message `seq`, while it is in the window.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.messages.get(index).map(|slot| &slot.data)
    }

    /// Release the acknowledged messages at the front (each handed to `done`, oldest first) and
    /// return the newest checkpoint that became flushed by it, if any.
    pub fn release(&mut self, mut done: impl FnMut(T)) -> Option<Lsn> {
        while self.messages.front().is_some_and(|s| s.acked) {
            if let Some(slot) = self.messages.pop_front() {
                self.base += 1;
                done(slot.data);
            }
        }
        let mut flushed = None;
        while let Some(&(seq, lsn)) = self.checkpoints.front()
            && seq <= self.base
        {
            flushed = Some(lsn);
            self.checkpoints.pop_front();
        }
        flushed
    }

    /// Whether the window holds `capacity` unreleased messages.
    /// Every message numbered below this is acknowledged and released.
    pub fn settled(&self) -> u64 {
        self.base
    }

    pub fn is_full(&self) -> bool {
        self.messages.len() >= self.capacity
    }

    /// Whether no message is waiting for its ack (checkpoints may still wait to be released).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Unreleased messages.
    pub fn in_flight(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(w: &mut AckWindow<&'static str>) -> (Vec<&'static str>, Option<Lsn>) {
        let mut out = Vec::new();
        let lsn = w.release(|m| out.push(m));
        (out, lsn)
    }

    #[test]
    fn checkpoints_wait_for_every_earlier_ack_even_out_of_order() {
        let mut w = AckWindow::new(10);
        let a = w.push_message("a");
        w.push_checkpoint(Lsn(100));
        let b = w.push_message("b");
        w.push_checkpoint(Lsn(200));
        assert_eq!(w.in_flight(), 2);

        // The second ack arrives first: nothing may be flushed yet.
        assert!(w.ack(b));
        assert_eq!(released(&mut w), (vec![], None));

        assert!(w.ack(a));
        assert_eq!(released(&mut w), (vec!["a", "b"], Some(Lsn(200))));
        assert!(w.is_empty());
        assert_eq!(released(&mut w), (vec![], None));
    }

    #[test]
    fn a_checkpoint_before_any_message_is_released_at_once() {
        let mut w = AckWindow::new(10);
        w.push_checkpoint(Lsn(50));
        let a = w.push_message("a");
        w.push_checkpoint(Lsn(100));
        assert_eq!(released(&mut w), (vec![], Some(Lsn(50))));
        w.ack(a);
        assert_eq!(released(&mut w), (vec!["a"], Some(Lsn(100))));
    }

    #[test]
    fn stray_and_repeated_acks_change_nothing() {
        let mut w = AckWindow::new(10);
        let a = w.push_message("a");
        let b = w.push_message("b");
        w.push_checkpoint(Lsn(7));
        assert!(!w.ack(b + 1), "never sent");
        assert!(w.ack(a));
        assert!(!w.ack(a), "acked twice");
        assert_eq!(released(&mut w), (vec!["a"], None));
        assert!(!w.ack(a), "released already");
        assert!(w.ack(b));
        assert_eq!(released(&mut w), (vec!["b"], Some(Lsn(7))));
    }

    /// A full window of one must free room on each ack (found by the benchmark with
    /// maxInFlight: 1, when the window was made of futures).
    #[test]
    fn each_ack_frees_room_even_without_a_checkpoint() {
        let mut w = AckWindow::new(1);
        let a = w.push_message("a");
        assert!(w.is_full());
        w.ack(a);
        assert_eq!(released(&mut w), (vec!["a"], None));
        assert!(!w.is_full() && w.is_empty());
        assert_eq!(w.next_seq(), 1);
    }

    #[test]
    fn capacity_counts_messages_only() {
        let mut w = AckWindow::new(2);
        w.push_checkpoint(Lsn(1));
        w.push_message("a");
        assert!(!w.is_full());
        w.push_message("b");
        assert!(w.is_full());
    }
}
