//! The subject path and grant parsers never panic; an accepted path is
//! covered by itself as a grant, and a concrete path matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_protocol::{GrantPattern, SubjectPath, TopicName};

fuzz_target!(|input: &str| {
    let _ = TopicName::parse(input);
    let grant = GrantPattern::parse(input);
    if let Ok(path) = SubjectPath::parse_pattern(input) {
        assert!(path.is_covered_by(input), "{input:?}");
        assert!(grant.is_some());
        if !path.has_wildcard() {
            assert!(path.matches(input));
            assert!(SubjectPath::parse_concrete(input).is_ok());
        }
        assert_eq!(
            path.topic().as_str(),
            input.split('.').next().unwrap_or_default()
        );
    }
    if let Some((pattern, subject)) = input.split_once(' ')
        && let (Ok(p), Some(g)) = (
            SubjectPath::parse_pattern(subject),
            GrantPattern::parse(pattern),
        )
        && g.covers(&p)
        && !p.has_wildcard()
    {
        assert!(
            g.matches(subject),
            "{pattern:?} covers {subject:?} but does not match it"
        );
    }
});
