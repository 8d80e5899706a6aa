//! The rule both services apply to `log.level` beyond tracing's own syntax.
//!
//! A tracing filter reads a bare word as a target: `warning` or `verbose`
//! would switch on one module of that name and every other line off,
//! errors included. An operator who writes one means a level, so a bare
//! word must be a level's name; `target=level` directives pass through to
//! tracing's own parser.

/// The levels a bare word may name.
pub const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Refuses a directive of `filter` that is a bare word other than a level.
pub fn check_bare_words(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains(['=', '[', '{']) {
            continue;
        }
        if !LEVELS
            .iter()
            .any(|level| level.eq_ignore_ascii_case(directive))
        {
            return Err(format!(
                "{directive:?} is not a level (off, error, warn, info, debug, trace); \
                 to filter a module, write module=level"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_pass() {
        for good in [
            "info",
            "WARN",
            "info,sse_node=debug",
            "async_nats=warn",
            "off",
            "",
        ] {
            assert_eq!(check_bare_words(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn a_bare_word_that_is_no_level_is_refused() {
        for bad in ["warning", "verbose", "info,sse_node"] {
            let error = check_bare_words(bad).unwrap_err();
            assert!(error.contains("is not a level"), "{bad:?}: {error}");
        }
    }
}
