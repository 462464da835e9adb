//! In-flight acknowledgements, in commit order; advances the flushed LSN.
//!
//! Every published message enters the window as its ack future; every transaction end (and
//! every idle keepalive position) enters as a checkpoint carrying an LSN. The window yields in
//! insertion order, so a checkpoint comes out only after every message pushed before it has
//! been acknowledged — which is exactly when its LSN may be reported to PostgreSQL as flushed.
//! Acks that arrive out of order wait for the older ones.
//!
//! The window is bounded ([`AckWindow::is_full`]); the publish loop stops taking new messages
//! while it is full, so memory stays bounded however large a transaction is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::FuturesOrdered;

use crate::lsn::Lsn;

type Entry<E> = Pin<Box<dyn Future<Output = Result<Option<Lsn>, E>> + Send>>;

/// Ordered acknowledgements with checkpoints.
pub struct AckWindow<E> {
    entries: FuturesOrdered<Entry<E>>,
    messages: usize,
    capacity: usize,
}

impl<E: Send + 'static> AckWindow<E> {
    /// A window holding at most `capacity` unacknowledged messages (checkpoints do not count).
    pub fn new(capacity: usize) -> Self {
        AckWindow {
            entries: FuturesOrdered::new(),
            messages: 0,
            capacity: capacity.max(1),
        }
    }

    /// Track one published message.
    pub fn push_message(&mut self, ack: impl Future<Output = Result<(), E>> + Send + 'static) {
        self.messages += 1;
        self.entries
            .push_back(Box::pin(async move { ack.await.map(|()| None) }));
    }

    /// `lsn` becomes flushed once everything pushed before it is acknowledged.
    pub fn push_checkpoint(&mut self, lsn: Lsn) {
        self.entries.push_back(Box::pin(std::future::ready(Ok(Some(lsn)))));
    }

    /// Whether the window holds `capacity` unacknowledged messages.
    pub fn is_full(&self) -> bool {
        self.messages >= self.capacity
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Unacknowledged messages.
    pub fn in_flight(&self) -> usize {
        self.messages
    }

    /// The next entry to complete, in insertion order: `Ok(Some(lsn))` when a checkpoint's LSN
    /// became flushed, `Ok(None)` when a message was acknowledged (a slot in the window freed).
    /// `None` when the window is empty. An ack error is returned as soon as it is the oldest
    /// entry.
    pub async fn next(&mut self) -> Option<Result<Option<Lsn>, E>> {
        std::future::poll_fn(|cx| self.poll_entry(cx)).await
    }

    fn poll_entry(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Option<Lsn>, E>>> {
        let polled = Pin::new(&mut self.entries).poll_next(cx);
        if let Poll::Ready(Some(Ok(None) | Err(_))) = polled {
            self.messages = self.messages.saturating_sub(1);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    async fn ack(rx: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
        rx.await.unwrap_or_else(|_| Err("dropped".into()))
    }

    #[tokio::test]
    async fn checkpoints_wait_for_every_earlier_ack_even_out_of_order() {
        let mut w = AckWindow::<String>::new(10);
        let (a_tx, a_rx) = oneshot::channel();
        let (b_tx, b_rx) = oneshot::channel();
        w.push_message(ack(a_rx));
        w.push_checkpoint(Lsn(100));
        w.push_message(ack(b_rx));
        w.push_checkpoint(Lsn(200));
        assert_eq!(w.in_flight(), 2);

        // The second ack arrives first: nothing may be flushed yet.
        b_tx.send(Ok(())).ok();
        let poll = tokio::time::timeout(std::time::Duration::from_millis(50), w.next()).await;
        assert!(poll.is_err(), "progress before the first ack");

        a_tx.send(Ok(())).ok();
        assert_eq!(w.next().await, Some(Ok(None)));
        assert_eq!(w.next().await, Some(Ok(Some(Lsn(100)))));
        assert_eq!(w.next().await, Some(Ok(None)));
        assert_eq!(w.next().await, Some(Ok(Some(Lsn(200)))));
        assert_eq!(w.next().await, None);
        assert_eq!(w.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_ack_error_stops_progress_before_later_checkpoints() {
        let mut w = AckWindow::<String>::new(10);
        let (a_tx, a_rx) = oneshot::channel();
        w.push_checkpoint(Lsn(50));
        w.push_message(ack(a_rx));
        w.push_checkpoint(Lsn(100));
        a_tx.send(Err("timed out".into())).ok();
        assert_eq!(w.next().await, Some(Ok(Some(Lsn(50)))));
        assert_eq!(w.next().await, Some(Err("timed out".to_string())));
    }

    /// A full window of one must report each ack, or a publisher waiting for room would
    /// never be told there is some (found by the benchmark with maxInFlight: 1).
    #[tokio::test]
    async fn each_ack_frees_room_even_without_a_checkpoint() {
        let mut w = AckWindow::<String>::new(1);
        w.push_message(std::future::ready(Ok(())));
        assert!(w.is_full());
        assert_eq!(w.next().await, Some(Ok(None)));
        assert!(!w.is_full() && w.is_empty());
    }

    #[test]
    fn capacity_counts_messages_only() {
        let mut w = AckWindow::<String>::new(2);
        w.push_checkpoint(Lsn(1));
        w.push_message(std::future::ready(Ok(())));
        assert!(!w.is_full());
        w.push_message(std::future::ready(Ok(())));
        assert!(w.is_full());
    }
}
