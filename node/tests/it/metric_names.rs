//! Prometheus's naming rule for an exposition, shared by the node's and
//! admin's tests: `_total` names a counter and nothing else, which
//! `promtool check metrics` also holds exporters to.

/// Panics naming the first metric of `exposition` (the text format) whose
/// `# TYPE` breaks the rule.
pub(crate) fn assert_total_names_only_counters(exposition: &str) {
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("`# TYPE name kind`");
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{name} is a {kind}"
            );
        }
    }
}
