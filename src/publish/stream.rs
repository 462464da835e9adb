//! The JetStream stream: named after `publisher.topic`, capturing `topic.>`.
//!
//! Created (file storage, the configured duplicate window, `publisher.replicas` replicas) when
//! missing; an existing stream keeps its own replication factor. When it exists, it
//! must capture every subject the default script can produce, or the service refuses to start
//! with a message naming the subject — publishing into a stream that silently drops our
//! subjects would lose data. A stream with `no_ack` set is refused too: without acks nothing
//! could ever be confirmed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::Config;

use crate::error::{Error, Kind, Result};

/// How long after its first publish wal-listener may publish a message again by itself: the
/// ack timeout (10 s), the longest reconnect backoff (30 s), and time to reconnect. A duplicate
/// window shorter than this lets an in-process replay store a message twice.
pub const RETRY_HORIZON: Duration = Duration::from_secs(60);

/// What JetStream has under the name `publisher.topic`.
pub(crate) enum StreamState {
    Missing,
    Found(Box<stream::Info>),
}

/// Read the stream `name` (one source for the service and `check --connect`).
pub(crate) async fn inspect(js: &jetstream::Context, name: &str) -> Result<StreamState> {
    match js.get_stream(name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| request_failed(&format!("reading stream {name}"), &e))?;
            Ok(StreamState::Found(Box::new(info.clone())))
        }
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
            Ok(StreamState::Missing)
        }
        Err(e) => Err(request_failed(&format!("looking up stream {name}"), &e)),
    }
}

/// Why an existing stream would lose events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamProblem {
    /// It does not capture `<topic>.>`; these are its subjects.
    Subjects(Vec<String>),
    /// `no_ack`: it never acknowledges, so nothing could be confirmed.
    NoAck,
}

/// What makes the stream `<topic>` unusable, if anything.
pub(crate) fn problem(topic: &str, config: &stream::Config) -> Option<StreamProblem> {
    if !config.subjects.iter().any(|s| subject_covers(s, &format!("{topic}.>"))) {
        return Some(StreamProblem::Subjects(config.subjects.clone()));
    }
    config.no_ack.then_some(StreamProblem::NoAck)
}

/// Whether a replay can fall outside the duplicate window `window`.
pub(crate) fn window_too_short(window: Duration) -> bool {
    window < RETRY_HORIZON
}

/// The stream exists and will store our events afterwards, or the error says why not.
pub(super) async fn ensure(js: &jetstream::Context, config: &Config) -> Result<()> {
    let name = &config.publisher.topic;
    let wanted = format!("{name}.>");
    match inspect(js, name).await? {
        StreamState::Found(info) => {
            match problem(name, &info.config) {
                Some(StreamProblem::Subjects(subjects)) => {
                    return Err(Error::new(
                        Kind::StreamUnusable,
                        format!(
                            "JetStream stream {name:?} exists but captures {subjects:?}, not {wanted:?}: events on subjects such as {name}.public_users would not be stored. Add {wanted:?} to the stream's subjects (nats stream edit {name} --subjects '{wanted}') or choose another publisher.topic"
                        ),
                    ));
                }
                Some(StreamProblem::NoAck) => {
                    return Err(Error::new(
                        Kind::StreamUnusable,
                        format!(
                            "JetStream stream {name:?} has no_ack set: it never acknowledges messages, so no change could be confirmed; recreate it without --no-ack, or choose another publisher.topic"
                        ),
                    ));
                }
                None => {}
            }
            if window_too_short(info.config.duplicate_window) {
                tracing::warn!(
                    stream = %name,
                    window = ?info.config.duplicate_window,
                    "the stream's duplicate window is shorter than the {RETRY_HORIZON:?} in which wal-listener may replay a message after a failure: such a replay may store duplicates (2m or more recommended)"
                );
            }
            Ok(())
        }
        StreamState::Missing => {
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![wanted.clone()],
                duplicate_window: config.publisher.duplicate_window,
                storage: stream::StorageType::File,
                num_replicas: config.publisher.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| request_failed(&format!("creating stream {name}"), &e))?;
            tracing::info!(stream = %name, subjects = %wanted, replicas = config.publisher.replicas, "created JetStream stream");
            if window_too_short(config.publisher.duplicate_window) {
                tracing::warn!(
                    window = ?config.publisher.duplicate_window,
                    "publisher.duplicateWindow is shorter than the {RETRY_HORIZON:?} in which wal-listener may replay a message after a failure: such a replay may store duplicates (2m or more recommended)"
                );
            }
            Ok(())
        }
    }
}

/// Whether JetStream says that a stream captures `subject`: `Ok` if one does, fatal if
/// JetStream answers that none does, transient if JetStream does not answer.
pub(super) async fn captured(js: &jetstream::Context, subject: &str, topic: &str) -> Result<()> {
    use jetstream::context::GetStreamByNameErrorKind as K;
    match js.stream_by_subject(subject).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), K::NotFound | K::InvalidSubject) => Err(Error::new(
            Kind::SubjectUncaptured,
            format!(
                "no JetStream stream captures the subject of a published message ({subject:?}; JetStream is up and says so): a routing script returned a subject outside the stream's subjects (e.g. not under publisher.topic), or the stream was deleted or changed while running; route to subjects under {topic}.> (publisher.topic) or add the subject to a stream's subjects"
            ),
        )),
        Err(e) => Err(request_failed(
            &format!("asking JetStream which stream captures {subject:?}"),
            &e,
        )),
    }
}

/// Whether a failed JetStream API request was answered "no responders": JetStream is not
/// there to answer (stopping, starting, electing a leader, or not enabled). async-nats words
/// that as "requested JetStream resource does not exist", which would mislead an operator.
pub fn jetstream_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{RequestError, RequestErrorKind};
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<RequestError>()
            && r.kind() == RequestErrorKind::NoResponders
        {
            return true;
        }
        if let Some(r) = e.downcast_ref::<async_nats::RequestError>()
            && r.kind() == async_nats::RequestErrorKind::NoResponders
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// A JetStream API request that failed: always transient (an operator's fix, such as
/// enabling JetStream, is picked up by the retry), worded by what happened.
fn request_failed(what: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    if jetstream_unavailable(e) {
        crate::metrics::jetstream_unavailable();
        return Error::new(
            Kind::JetStreamUnavailable,
            format!(
                "{what}: JetStream does not answer (no responders): the server is stopping or starting, a cluster is electing a leader, or JetStream is not enabled (nats-server -js); retrying"
            ),
        );
    }
    Error::new(Kind::NatsUnavailable, format!("{what}: {e}"))
}

/// Whether the stream subject filter `filter` captures every subject matched by `pattern`.
pub fn subject_covers(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_covers;

    #[test]
    fn covers() {
        assert!(subject_covers("wal_listener.>", "wal_listener.>"));
        assert!(subject_covers(">", "wal_listener.>"));
        assert!(subject_covers("*.>", "wal_listener.>"));
        assert!(!subject_covers("wal_listener.*", "wal_listener.>"));
        assert!(!subject_covers("wal_listener.public_users", "wal_listener.>"));
        assert!(!subject_covers("other.>", "wal_listener.>"));
        assert!(subject_covers("wal_listener.*", "wal_listener.x"));
        assert!(!subject_covers("a.b", "a"));
    }
}
