//! Who may read a topic: its access, and what a token grants.
//!
//! A topic is public or private; admin writes which in the stream's metadata
//! under [`ACCESS_METADATA_KEY`]. A private topic is read only with a token
//! whose `sse.subscribe` claim lists subject patterns ([`Grants`]). A request
//! is allowed when every path it asks for in a private topic is covered: every
//! subject the request can match is matched by some grant. A grant wider than
//! the request is fine; a request wider than every grant is not.
//!
//! Patterns use NATS wildcards (`*` one token, `>` one or more trailing
//! tokens). A bare topic name, in a request or a grant, stands for the whole
//! topic: the subject `<topic>` and everything below it (`<topic>.>`).

use crate::topic::{MAX_PATH_BYTES, MAX_PATH_TOKENS, SubjectPath, pattern_covers};

/// Stream metadata key holding a topic's access.
pub const ACCESS_METADATA_KEY: &str = "sse.access";
/// The JWT claim listing the patterns a token may read.
pub const SUBSCRIBE_CLAIM: &str = "sse.subscribe";

/// Who may read a topic; `public` or `private` in admin's API and in the
/// stream metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, without a token (the default).
    #[default]
    Public,
    /// Only holders of a token granting the paths read.
    Private,
}

impl Access {
    /// Reads the metadata value: absent or `public` is public, `private` is
    /// private. Any other value is private too: a typo must not open a topic.
    pub fn from_metadata_value(value: Option<&str>) -> Self {
        match value {
            None | Some("public") => Self::Public,
            Some(_) => Self::Private,
        }
    }

    /// Reads a topic's access from its stream metadata, under
    /// [`ACCESS_METADATA_KEY`].
    pub fn from_metadata(metadata: &std::collections::HashMap<String, String>) -> Self {
        Self::from_metadata_value(metadata.get(ACCESS_METADATA_KEY).map(String::as_str))
    }

    /// `public` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

/// One validated grant pattern from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPattern {
    /// The NATS patterns it stands for (two for a bare topic).
    patterns: Vec<String>,
}

impl GrantPattern {
    /// Validates a grant: dotted tokens of `[A-Za-z0-9_-]`, `*` or a last
    /// `>`; at most 16 tokens and 255 bytes. Unlike a request, a grant may
    /// start with a wildcard (`>` grants every topic). `None` when invalid.
    pub fn parse(grant: &str) -> Option<Self> {
        if grant.is_empty() || grant.len() > MAX_PATH_BYTES {
            return None;
        }
        let count = grant.split('.').count();
        if count > MAX_PATH_TOKENS {
            return None;
        }
        let mut literal = true;
        for (i, token) in grant.split('.').enumerate() {
            match token {
                "*" => literal = false,
                ">" if i == count - 1 => literal = false,
                _ if !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
                _ => return None,
            }
        }
        let patterns = if count == 1 && literal {
            vec![grant.to_owned(), format!("{grant}.>")]
        } else {
            vec![grant.to_owned()]
        };
        Some(Self { patterns })
    }

    /// Whether this grant covers every subject `request` can match.
    pub fn covers(&self, request: &SubjectPath) -> bool {
        request
            .nats_patterns()
            .iter()
            .all(|mine| self.patterns.iter().any(|g| pattern_covers(g, mine)))
    }

    /// Whether a concrete subject path is matched by this grant.
    pub fn matches(&self, subject: &str) -> bool {
        self.patterns
            .iter()
            .any(|g| crate::topic::subject_matches(g, subject))
    }
}

/// The patterns a token grants. Invalid entries grant nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    patterns: Vec<GrantPattern>,
}

impl Grants {
    /// Grants from the claim's entries; invalid ones are dropped.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            patterns: entries
                .into_iter()
                .filter_map(GrantPattern::parse)
                .collect(),
        }
    }

    /// Whether every subject `request` can match is granted. Each part of a
    /// bare-topic request (`<topic>`, `<topic>.>`) may be covered by a
    /// different grant.
    pub fn covers(&self, request: &SubjectPath) -> bool {
        request.nats_patterns().iter().all(|mine| {
            self.patterns
                .iter()
                .flat_map(|g| g.patterns.iter())
                .any(|g| pattern_covers(g, mine))
        })
    }

    /// Whether no valid pattern was granted.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SubjectPath {
        SubjectPath::parse_pattern(s).unwrap()
    }

    #[test]
    fn access_fails_closed() {
        assert_eq!(Access::from_metadata_value(None), Access::Public);
        assert_eq!(Access::from_metadata_value(Some("public")), Access::Public);
        assert_eq!(
            Access::from_metadata_value(Some("private")),
            Access::Private
        );
        assert_eq!(Access::from_metadata_value(Some("Privat")), Access::Private);
    }

    #[test]
    fn grants_cover_what_the_issue_lists() {
        let g = Grants::new(["orders.alice.>", "news.*"]);
        assert!(g.covers(&p("orders.alice.1")));
        assert!(g.covers(&p("orders.alice.>")));
        assert!(g.covers(&p("orders.alice.*")));
        assert!(!g.covers(&p("orders.>")));
        assert!(!g.covers(&p("orders")));
        assert!(!g.covers(&p("orders.bob.1")));
        assert!(!g.covers(&p("orders.alice")));
        assert!(g.covers(&p("news.x")));
        assert!(g.covers(&p("news.*")));
        assert!(!g.covers(&p("news.>")));
        assert!(!g.covers(&p("news")));
    }

    #[test]
    fn a_bare_topic_may_be_covered_by_two_grants() {
        assert!(Grants::new(["orders", "x.y"]).covers(&p("orders")));
        assert!(Grants::new(["orders.>", "orders"]).covers(&p("orders")));
        assert!(!Grants::new(["orders.>"]).covers(&p("orders")));
        assert!(Grants::new([">"]).covers(&p("orders")));
        assert!(Grants::new(["*", "*.>"]).covers(&p("orders")));
    }

    #[test]
    fn invalid_grants_grant_nothing() {
        for bad in [
            "",
            ".",
            "orders..x",
            "orders.>.x",
            "orders.a b",
            "ord*",
            "a.\n",
            "orders.é",
        ] {
            assert!(GrantPattern::parse(bad).is_none(), "{bad:?}");
        }
        let g = Grants::new(["orders.>.x", ""]);
        assert!(g.is_empty());
        assert!(!g.covers(&p("orders.x")));
    }
}
