//! Topic names and subject paths.
//!
//! A topic `orders` is the JetStream stream `SSE_orders`, which captures the
//! NATS subjects `<prefix>.orders` and `<prefix>.orders.>`. A subject path is
//! a dotted name inside a topic (`orders.42`); its first token is the topic.
//! A path given by a subscriber may use the NATS wildcards `*` (one token) and
//! `>` (one or more trailing tokens).

use std::fmt;

/// Longest subject path, in bytes.
pub const MAX_PATH_BYTES: usize = 255;
/// Most tokens in a subject path.
pub const MAX_PATH_TOKENS: usize = 16;
/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 64;
/// Prefix of every topic's JetStream stream name.
pub const STREAM_PREFIX: &str = "SSE_";

/// The token under the subject prefix to which a topic's stream republishes
/// each event it stores ([`live_subject`]). Upper case, which topic names
/// never are, so no topic's stream captures it.
pub const LIVE_TOKEN: &str = "LIVE";

/// Where a topic's stream republishes its events: every subject it stores,
/// whole, under `<prefix>.LIVE.`. This is the destination of the stream's
/// `republish` (from `>`); `sse.orders.42` is republished as
/// `sse.LIVE.sse.orders.42`, with its stream sequence, time and the
/// subject's previous sequence in headers.
pub fn live_destination(prefix: &str) -> String {
    format!("{prefix}.{LIVE_TOKEN}.>")
}

/// The republish of every topic's stream: each event it stores goes out
/// again, whole, with its sequence, to [`live_destination`], where a node
/// whose feed of a quiet topic let its consumer go hears it and takes it
/// in without asking JetStream for it. Needs the `nats` feature.
#[cfg(feature = "nats")]
pub fn live_republish(prefix: &str) -> async_nats::jetstream::stream::Republish {
    async_nats::jetstream::stream::Republish {
        source: ">".to_owned(),
        destination: live_destination(prefix),
        headers_only: false,
    }
}

/// The subject on which the stream republishes what it stores under
/// `subject` (which may be a subscription's wildcard pattern).
pub fn live_subject(prefix: &str, subject: &str) -> String {
    format!("{prefix}.{LIVE_TOKEN}.{subject}")
}

/// Why a topic name or subject path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The path or name was empty.
    #[error("subject path is empty")]
    Empty,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("subject path is {0} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    TooLong(usize),
    /// More than [`MAX_PATH_TOKENS`] tokens.
    #[error("subject path has {0} tokens; at most {MAX_PATH_TOKENS} are allowed")]
    TooManyTokens(usize),
    /// Two dots in a row, or a leading or trailing dot.
    #[error("subject path {0:?} has an empty token")]
    EmptyToken(String),
    /// A character outside `[A-Za-z0-9_-]` in a token.
    #[error(
        "subject path {path:?} has a character {ch:?} that is not allowed; tokens use [A-Za-z0-9_-]"
    )]
    BadCharacter {
        /// The whole path as given.
        path: String,
        /// The first character refused.
        ch: char,
    },
    /// A wildcard where it may not stand.
    #[error(
        "subject path {0:?} misuses a wildcard: '*' must be a whole token and '>' the whole last token"
    )]
    BadWildcard(String),
    /// The topic (first token) is a wildcard, or breaks the topic-name rule.
    #[error(
        "topic name {0:?} is not valid; topic names use [a-z0-9_-], 1 to {MAX_TOPIC_BYTES} characters"
    )]
    BadTopic(String),
    /// A path for publishing held a wildcard.
    #[error("subject path {0:?} has a wildcard; events are published to concrete paths")]
    WildcardInPublish(String),
}

/// A validated topic name: `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates a topic name.
    pub fn parse(name: &str) -> Result<Self, TopicError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_TOPIC_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(TopicError::BadTopic(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JetStream stream holding this topic: `SSE_<topic>`.
    pub fn stream_name(&self) -> String {
        format!("{STREAM_PREFIX}{}", self.0)
    }

    /// The topic held by a stream, if the stream is one of ours.
    pub fn from_stream_name(stream: &str) -> Option<Self> {
        stream
            .strip_prefix(STREAM_PREFIX)
            .and_then(|t| Self::parse(t).ok())
    }

    /// The subjects the topic's stream captures.
    pub fn stream_subjects(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("{prefix}.{}", self.0),
            format!("{prefix}.{}.>", self.0),
        ]
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated subject path such as `orders.42`, `orders.*` or `orders.>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPath {
    path: String,
    topic: TopicName,
    has_wildcard: bool,
}

impl SubjectPath {
    /// Validates a path that a subscriber may use, wildcards allowed.
    pub fn parse_pattern(path: &str) -> Result<Self, TopicError> {
        if path.is_empty() {
            return Err(TopicError::Empty);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(TopicError::TooLong(path.len()));
        }
        let count = path.split('.').count();
        if count > MAX_PATH_TOKENS {
            return Err(TopicError::TooManyTokens(count));
        }
        let mut has_wildcard = false;
        for (i, token) in path.split('.').enumerate() {
            match token {
                "" => return Err(TopicError::EmptyToken(path.to_owned())),
                "*" if i > 0 => has_wildcard = true,
                ">" if i > 0 && i == count - 1 => has_wildcard = true,
                "*" | ">" => {
                    return Err(if i == 0 {
                        TopicError::BadTopic(token.to_owned())
                    } else {
                        TopicError::BadWildcard(path.to_owned())
                    });
                }
                _ => {
                    if let Some(ch) = token
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
                    {
                        return Err(if ch == '*' || ch == '>' {
                            TopicError::BadWildcard(path.to_owned())
                        } else {
                            TopicError::BadCharacter {
                                path: path.to_owned(),
                                ch,
                            }
                        });
                    }
                }
            }
        }
        let first = path.split('.').next().unwrap_or_default();
        let topic = TopicName::parse(first)?;
        Ok(Self {
            path: path.to_owned(),
            topic,
            has_wildcard,
        })
    }

    /// Validates a concrete path to publish to: no wildcards.
    pub fn parse_concrete(path: &str) -> Result<Self, TopicError> {
        let parsed = Self::parse_pattern(path)?;
        if parsed.has_wildcard {
            return Err(TopicError::WildcardInPublish(path.to_owned()));
        }
        Ok(parsed)
    }

    /// The topic: the path's first token.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// Whether the path holds `*` or `>`.
    pub fn has_wildcard(&self) -> bool {
        self.has_wildcard
    }

    /// The NATS subject (or subject filter) for this path.
    pub fn nats_subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}", self.path)
    }

    /// Whether the path is a bare topic name, which subscribes to the whole
    /// topic: the subject `<topic>` and everything below it.
    pub fn is_whole_topic(&self) -> bool {
        self.path.len() == self.topic.as_str().len()
    }

    /// Whether a concrete path (without the subject prefix) matches this
    /// pattern: a bare topic matches the whole topic, anything longer follows
    /// NATS wildcard rules.
    pub fn matches(&self, concrete: &str) -> bool {
        if self.is_whole_topic() {
            return concrete
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
        }
        if !self.has_wildcard {
            return self.path == concrete;
        }
        subject_matches(&self.path, concrete)
    }

    /// The NATS patterns this path stands for, without the subject prefix:
    /// a bare topic is `<topic>` and `<topic>.>`, anything else itself.
    pub fn nats_patterns(&self) -> Vec<String> {
        if self.is_whole_topic() {
            vec![self.path.clone(), format!("{}.>", self.path)]
        } else {
            vec![self.path.clone()]
        }
    }

    /// Whether every path this pattern matches is also matched by `grant`,
    /// a pattern from a token (see [`crate::grant`]). A bare topic, as a
    /// request or as a grant, stands for the whole topic. A grant that is not
    /// a valid pattern covers nothing.
    pub fn is_covered_by(&self, grant: &str) -> bool {
        crate::grant::GrantPattern::parse(grant).is_some_and(|g| g.covers(self))
    }
}

/// Whether every subject matched by the NATS pattern `narrow` is also
/// matched by the NATS pattern `wide`. Both are dotted patterns whose
/// wildcards are whole tokens (`*`, and `>` only last).
pub fn pattern_covers(wide: &str, narrow: &str) -> bool {
    let mut mine = narrow.split('.');
    let mut theirs = wide.split('.');
    loop {
        match (mine.next(), theirs.next()) {
            // `>` in the grant takes one or more tokens, whatever they are.
            (Some(_), Some(">")) => return true,
            // `>` in the request reaches deeper than any other grant token.
            (Some(">"), _) => return false,
            // `*` in the grant takes any one token, `*` included.
            (Some(_), Some("*")) => {}
            (Some(m), Some(t)) if m == t && m != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl fmt::Display for SubjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// NATS subject matching of a concrete subject against a pattern.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_live_subjects_are_captured_by_no_topic() {
        assert_eq!(live_destination("sse"), "sse.LIVE.>");
        assert_eq!(
            live_subject("sse", "sse.orders.42"),
            "sse.LIVE.sse.orders.42"
        );
        assert!(TopicName::parse(LIVE_TOKEN).is_err());
    }

    #[test]
    fn accepts_paths_and_wildcards() {
        for ok in [
            "orders",
            "orders.42",
            "orders.*",
            "orders.>",
            "a-b_c.X-1.*.z",
        ] {
            assert!(SubjectPath::parse_pattern(ok).is_ok(), "{ok}");
        }
        let p = SubjectPath::parse_pattern("chat.room1").unwrap();
        assert_eq!(p.topic().as_str(), "chat");
        assert!(!p.has_wildcard());
    }

    #[test]
    fn refuses_bad_paths_precisely() {
        use TopicError::*;
        type Check = fn(&TopicError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, Empty)),
            ("orders..1", |e| matches!(e, EmptyToken(_))),
            (".orders", |e| matches!(e, EmptyToken(_))),
            ("orders.", |e| matches!(e, EmptyToken(_))),
            ("orders.a b", |e| matches!(e, BadCharacter { ch: ' ', .. })),
            ("orders.é", |e| matches!(e, BadCharacter { .. })),
            ("orders.>.x", |e| matches!(e, BadWildcard(_))),
            ("orders.a*", |e| matches!(e, BadWildcard(_))),
            ("*.x", |e| matches!(e, BadTopic(_))),
            (">", |e| matches!(e, BadTopic(_))),
            ("Orders.x", |e| matches!(e, BadTopic(_))),
            ("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", |e| {
                matches!(e, TooManyTokens(17))
            }),
        ];
        for (path, check) in cases {
            let err = SubjectPath::parse_pattern(path).unwrap_err();
            assert!(check(&err), "{path:?} gave {err:?}");
        }
        let long = format!("t.{}", "x".repeat(300));
        assert_eq!(SubjectPath::parse_pattern(&long).unwrap_err(), TooLong(302));
        assert!(matches!(
            SubjectPath::parse_concrete("orders.*").unwrap_err(),
            WildcardInPublish(_)
        ));
    }

    #[test]
    fn matching_follows_nats_rules() {
        let star = SubjectPath::parse_pattern("orders.*").unwrap();
        assert!(star.matches("orders.1"));
        assert!(!star.matches("orders"));
        assert!(!star.matches("orders.1.2"));
        let tail = SubjectPath::parse_pattern("orders.>").unwrap();
        assert!(tail.matches("orders.1.2"));
        assert!(!tail.matches("orders"));
        let exact = SubjectPath::parse_pattern("orders.1").unwrap();
        assert!(exact.matches("orders.1"));
        assert!(!exact.matches("orders.1.2"));
        assert!(!exact.matches("orders"));
        let whole = SubjectPath::parse_pattern("orders").unwrap();
        assert!(whole.is_whole_topic());
        assert!(whole.matches("orders"));
        assert!(whole.matches("orders.1.2"));
        assert!(!whole.matches("ordersx"));
        assert!(!whole.matches("ordersx.1"));
    }

    #[test]
    fn grants_cover_only_narrower_patterns() {
        let p = |s| SubjectPath::parse_pattern(s).unwrap();
        assert!(p("orders.alice.1").is_covered_by("orders.alice.>"));
        assert!(p("orders.alice.>").is_covered_by("orders.alice.>"));
        assert!(!p("orders.>").is_covered_by("orders.alice.>"));
        assert!(p("news.x").is_covered_by("news.*"));
        assert!(!p("news.*.y").is_covered_by("news.*"));
        assert!(!p("news.>").is_covered_by("news.*"));
        assert!(p("news.*").is_covered_by("news.*"));
        // `*` in a request is wider than a literal grant.
        assert!(!p("news.*").is_covered_by("news.x"));
        // A bare topic is the whole topic, as a request and as a grant.
        assert!(!p("orders").is_covered_by("orders.>"));
        assert!(!p("orders").is_covered_by("orders.*"));
        assert!(p("orders").is_covered_by("orders"));
        assert!(p("orders.alice.1").is_covered_by("orders"));
        assert!(p("orders.>").is_covered_by("orders"));
        assert!(!p("orders").is_covered_by("*"));
        assert!(p("orders").is_covered_by(">"));
        assert!(!p("ordersx.1").is_covered_by("orders"));
        assert!(!p("orders.1").is_covered_by("orders.1 "));
        assert!(!p("orders.1").is_covered_by(""));
    }

    #[test]
    fn stream_names_round_trip() {
        let t = TopicName::parse("demo_1").unwrap();
        assert_eq!(t.stream_name(), "SSE_demo_1");
        assert_eq!(TopicName::from_stream_name("SSE_demo_1"), Some(t));
        assert_eq!(TopicName::from_stream_name("OTHER"), None);
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,300}") {
            let _ = SubjectPath::parse_pattern(&s);
        }

        #[test]
        fn valid_paths_match_themselves(s in "[a-z0-9_-]{1,10}(\\.[A-Za-z0-9_-]{1,8}){0,6}") {
            let p = SubjectPath::parse_pattern(&s).unwrap();
            prop_assert!(p.matches(&s));
            prop_assert!(p.is_covered_by(&s));
        }

        /// A grant covers a request only if it matches every subject the
        /// request can match: checked on concrete subjects drawn from a
        /// small alphabet so that overlaps are frequent.
        #[test]
        fn coverage_is_sound(
            request in "t(\\.(a|b|\\*)){0,3}(\\.>)?",
            grant in "(t|\\*|>)(\\.(a|b|\\*)){0,3}(\\.>)?",
            subject in "t(\\.(a|b|c)){0,4}",
        ) {
            let Ok(request) = SubjectPath::parse_pattern(&request) else { return Ok(()) };
            let grant_matches = |s: &str| {
                crate::grant::GrantPattern::parse(&grant).is_some_and(|g| g.matches(s))
            };
            if request.is_covered_by(&grant) && request.matches(&subject) {
                prop_assert!(grant_matches(&subject), "{request} under {grant} but not {subject}");
            }
        }
    }
}
