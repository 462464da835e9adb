//! The JetStream stream: named after `publisher.topic`, capturing `topic.>`.
//!
//! Created (file storage, the configured duplicate window) when missing. When it exists, it
//! must capture every subject the default script can produce, or the service refuses to start
//! with a message naming the subject — publishing into a stream that silently drops our
//! subjects would lose data. A stream with `no_ack` set is refused too: without acks nothing
//! could ever be confirmed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::Config;

use super::PublishError;

/// How long after its first publish wal-listener may publish a message again by itself: the
/// ack timeout (10 s), the longest reconnect backoff (30 s), and time to reconnect. A duplicate
/// window shorter than this lets an in-process replay store a message twice.
pub const RETRY_HORIZON: Duration = Duration::from_secs(60);

pub(super) async fn ensure(js: &jetstream::Context, config: &Config) -> Result<(), PublishError> {
    let name = &config.publisher.topic;
    let wanted = format!("{name}.>");
    match js.get_stream(name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| PublishError::Transient(format!("reading stream {name}: {e}")))?;
            let subjects = info.config.subjects.clone();
            if !subjects.iter().any(|s| subject_covers(s, &wanted)) {
                return Err(PublishError::Fatal(format!(
                    "JetStream stream {name:?} exists but captures {subjects:?}, not {wanted:?}: events on subjects such as {name}.public_users would not be stored. Add {wanted:?} to the stream's subjects (nats stream edit {name} --subjects '{wanted}') or choose another publisher.topic"
                )));
            }
            if info.config.no_ack {
                return Err(PublishError::Fatal(format!(
                    "JetStream stream {name:?} has no_ack set: it never acknowledges messages, so no change could be confirmed; recreate it without --no-ack, or choose another publisher.topic"
                )));
            }
            if info.config.duplicate_window < RETRY_HORIZON {
                tracing::warn!(
                    stream = %name,
                    window = ?info.config.duplicate_window,
                    "the stream's duplicate window is shorter than the {RETRY_HORIZON:?} in which wal-listener may replay a message after a failure: such a replay may store duplicates (2m or more recommended)"
                );
            }
            Ok(())
        }
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![wanted.clone()],
                duplicate_window: config.publisher.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| PublishError::Transient(format!("creating stream {name}: {e}")))?;
            tracing::info!(stream = %name, subjects = %wanted, "created JetStream stream");
            if config.publisher.duplicate_window < RETRY_HORIZON {
                tracing::warn!(
                    window = ?config.publisher.duplicate_window,
                    "publisher.duplicateWindow is shorter than the {RETRY_HORIZON:?} in which wal-listener may replay a message after a failure: such a replay may store duplicates (2m or more recommended)"
                );
            }
            Ok(())
        }
        Err(e) => Err(PublishError::Transient(format!(
            "looking up stream {name}: {e} (is JetStream enabled on the server? start nats-server with -js)"
        ))),
    }
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
