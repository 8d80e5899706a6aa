//! The shared event-stream vectors (`tests/vectors/event_stream.json`)
//! through [`sse_protocol::event_stream`]. The Python tests' parser
//! (`tests/cluster/sse.py`) reads the same file, so the two agree.

use serde::Deserialize;
use sse_protocol::event_stream::{ParsedEvent, parse_event_stream};

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    body: String,
    events: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    event: String,
    data: String,
    id: String,
}

#[test]
fn every_vector_parses_as_expected() {
    let vectors: Vectors =
        serde_json::from_str(include_str!("vectors/event_stream.json")).expect("vectors are JSON");
    assert!(vectors.cases.len() >= 10, "the vector file lost its cases");
    for case in vectors.cases {
        let (events, _) = parse_event_stream(case.body.as_bytes());
        let expected: Vec<ParsedEvent> = case
            .events
            .into_iter()
            .map(|e| ParsedEvent {
                event: e.event,
                data: e.data,
                id: e.id,
            })
            .collect();
        assert_eq!(events, expected, "{}", case.name);
    }
}
