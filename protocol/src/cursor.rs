//! The event id: a resume cursor.
//!
//! For each topic of a subscription, `<topic>:<epoch>:<seq>`, joined with `,`
//! when several topics are subscribed. `seq` is the JetStream stream sequence
//! of the last event the client has seen in that topic. `epoch` names the
//! stream's incarnation (its creation time in nanoseconds, base36), so an id
//! from a deleted and recreated stream is recognised, never resumed silently.

use std::fmt::{self, Write as _};

use crate::topic::{TopicError, TopicName};

/// Most topics one cursor may name.
pub const MAX_CURSOR_TOPICS: usize = 64;
/// Longest epoch, in characters: base36 of a `u128` fits in 25.
pub const MAX_EPOCH_CHARS: usize = 25;

/// Longest part of an id shown whole in an error: a well-formed part is at
/// most 111 characters (a topic of 64, an epoch of 25, a `u64`).
const SHOWN_PART_CHARS: usize = 120;

/// `part` as an error shows it: cut short past [`SHOWN_PART_CHARS`], so
/// that a refusal of a 4 KiB id does not send it all back.
fn shown(part: &str) -> String {
    match part.char_indices().nth(SHOWN_PART_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &part[..cut], part.len()),
        None => part.to_owned(),
    }
}

/// Why an event id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// An empty id, or an empty part between commas.
    #[error("event id has an empty part")]
    EmptyPart,
    /// A part that is not `<topic>:<epoch>:<seq>`.
    #[error("event id part {0:?} is not <topic>:<epoch>:<seq>")]
    Shape(String),
    /// The topic of a part is not a valid topic name.
    #[error("event id part {part:?}: {source}")]
    Topic {
        /// The part as given.
        part: String,
        /// What is wrong with its topic.
        source: TopicError,
    },
    /// The epoch is not lowercase base36 of a sensible length.
    #[error("event id part {0:?} has an epoch that is not base36 [0-9a-z]{{1,25}}")]
    Epoch(String),
    /// The sequence is not a decimal `u64`.
    #[error(
        "event id part {0:?} has a sequence that is not a decimal number from 0 to 18446744073709551615"
    )]
    Sequence(String),
    /// A topic named twice.
    #[error("event id names topic {0:?} twice")]
    DuplicateTopic(String),
    /// Too many topics.
    #[error("event id names {0} topics; at most {MAX_CURSOR_TOPICS} are allowed")]
    TooManyTopics(usize),
}

/// Where a client stands in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPosition {
    /// The topic.
    pub topic: TopicName,
    /// The stream incarnation the sequence belongs to.
    pub epoch: String,
    /// The last stream sequence seen; 0 when none.
    pub seq: u64,
}

/// A parsed event id: one position per topic, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    positions: Vec<TopicPosition>,
}

impl Cursor {
    /// A cursor from positions; later duplicates of a topic are ignored.
    pub fn new(positions: Vec<TopicPosition>) -> Self {
        let mut deduped: Vec<TopicPosition> = Vec::with_capacity(positions.len());
        for p in positions {
            if !deduped.iter().any(|d| d.topic == p.topic) {
                deduped.push(p);
            }
        }
        Self { positions: deduped }
    }

    /// Parses an event id as a client sends it back.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let parts = text.split(',').count();
        if parts > MAX_CURSOR_TOPICS {
            return Err(CursorError::TooManyTopics(parts));
        }
        let mut positions: Vec<TopicPosition> = Vec::with_capacity(parts);
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(CursorError::EmptyPart);
            }
            let mut fields = part.split(':');
            let (Some(topic), Some(epoch), Some(seq), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(CursorError::Shape(shown(part)));
            };
            let topic = TopicName::parse(topic).map_err(|source| CursorError::Topic {
                part: shown(part),
                source,
            })?;
            if epoch.is_empty()
                || epoch.len() > MAX_EPOCH_CHARS
                || !epoch
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            {
                return Err(CursorError::Epoch(shown(part)));
            }
            if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CursorError::Sequence(shown(part)));
            }
            let seq: u64 = seq
                .parse()
                .map_err(|_| CursorError::Sequence(shown(part)))?;
            if positions.iter().any(|p| p.topic == topic) {
                return Err(CursorError::DuplicateTopic(topic.to_string()));
            }
            positions.push(TopicPosition {
                topic,
                epoch: epoch.to_owned(),
                seq,
            });
        }
        Ok(Self { positions })
    }

    /// The position for a topic, if the cursor names it.
    pub fn position(&self, topic: &TopicName) -> Option<&TopicPosition> {
        self.positions.iter().find(|p| &p.topic == topic)
    }

    /// All positions, in order.
    pub fn positions(&self) -> &[TopicPosition] {
        &self.positions
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write_position(f, p.topic.as_str(), &p.epoch, p.seq)?;
        }
        Ok(())
    }
}

/// Writes one `<topic>:<epoch>:<seq>` part.
pub fn write_position(
    out: &mut impl fmt::Write,
    topic: &str,
    epoch: &str,
    seq: u64,
) -> fmt::Result {
    write_position_prefix(out, topic, epoch)?;
    // Not `write!`: a stream of several topics writes its cursor with
    // every event, and the formatting machinery costs more than the copy.
    out.write_str(itoa::Buffer::new().format(seq))
}

/// Writes the `<topic>:<epoch>:` that comes before a part's sequence, for
/// a writer that fills the sequence in later, once per event.
pub fn write_position_prefix(out: &mut impl fmt::Write, topic: &str, epoch: &str) -> fmt::Result {
    out.write_str(topic)?;
    out.write_char(':')?;
    out.write_str(epoch)?;
    out.write_char(':')
}

/// The epoch for a stream created at `unix_nanos`: base36, lowercase.
pub fn epoch_from_unix_nanos(unix_nanos: i128) -> String {
    let mut n = unix_nanos.unsigned_abs();
    if n == 0 {
        return "0".to_owned();
    }
    let mut digits = Vec::with_capacity(MAX_EPOCH_CHARS);
    while n > 0 {
        let d = (n % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_composite_ids() {
        let text = "orders:kx3f0a:42,chat:kx3f0b:0";
        let c = Cursor::parse(text).unwrap();
        assert_eq!(c.positions().len(), 2);
        let orders = TopicName::parse("orders").unwrap();
        assert_eq!(c.position(&orders).unwrap().seq, 42);
        assert_eq!(c.to_string(), text);
    }

    #[test]
    fn refuses_malformed_ids() {
        let bad = [
            ("", CursorError::EmptyPart),
            ("a:b:1,", CursorError::EmptyPart),
            ("a:b", CursorError::Shape("a:b".into())),
            ("a:b:1:2", CursorError::Shape("a:b:1:2".into())),
            ("a:B:1", CursorError::Epoch("a:B:1".into())),
            ("a::1", CursorError::Epoch("a::1".into())),
            ("a:b:x", CursorError::Sequence("a:b:x".into())),
            ("a:b:-1", CursorError::Sequence("a:b:-1".into())),
            (
                "a:b:99999999999999999999999",
                CursorError::Sequence("a:b:99999999999999999999999".into()),
            ),
            ("a:b:1,a:b:2", CursorError::DuplicateTopic("a".into())),
        ];
        for (text, want) in bad {
            assert_eq!(Cursor::parse(text).unwrap_err(), want, "{text:?}");
        }
        assert!(matches!(
            Cursor::parse("A:b:1").unwrap_err(),
            CursorError::Topic { .. }
        ));
    }

    #[test]
    fn a_long_malformed_part_is_shown_cut_short() {
        let long = format!("orders:{}:1", "é".repeat(2000));
        let message = Cursor::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(
            message.contains("orders:é") && message.contains("… (4009 bytes)"),
            "{message}"
        );
        let short = "orders:B:1";
        let message = Cursor::parse(short).unwrap_err().to_string();
        assert!(message.contains("\"orders:B:1\""), "{message}");
    }

    #[test]
    fn epochs_are_base36() {
        assert_eq!(epoch_from_unix_nanos(0), "0");
        assert_eq!(epoch_from_unix_nanos(35), "z");
        assert_eq!(epoch_from_unix_nanos(36), "10");
        let e = epoch_from_unix_nanos(1_764_000_000_123_456_789);
        assert!(e.len() <= MAX_EPOCH_CHARS);
        assert!(Cursor::parse(&format!("t:{e}:1")).is_ok());
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = Cursor::parse(&s);
        }

        #[test]
        fn round_trips(parts in proptest::collection::vec(("[a-z0-9_-]{1,12}", "[0-9a-z]{1,13}", any::<u64>()), 1..5)) {
            let mut seen = std::collections::HashSet::new();
            let parts: Vec<_> = parts.into_iter().filter(|(t, _, _)| seen.insert(t.clone())).collect();
            let text = parts.iter().map(|(t, e, s)| format!("{t}:{e}:{s}")).collect::<Vec<_>>().join(",");
            let c = Cursor::parse(&text).unwrap();
            prop_assert_eq!(c.to_string(), text);
        }
    }
}
