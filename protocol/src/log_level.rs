//! The rule both services apply to `log.level` beyond tracing's own syntax,
//! and the NATS client library's lines, kept at `warn` unless asked for.
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

/// The NATS client library's tracing target.
const NATS_CLIENT_TARGET: &str = "async_nats";

/// `filter` with the NATS client library's lines at `warn`, unless it names
/// the library itself. The services say connections, disconnections and an
/// unreachable server in their own words, with the URL; the library's info
/// lines say them again without it, every two seconds while NATS is away,
/// and a closed probe connection reads as the main one's end.
pub fn with_quiet_nats_client(filter: &str) -> String {
    if filter.contains(NATS_CLIENT_TARGET) {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("{NATS_CLIENT_TARGET}=warn")
    } else {
        format!("{filter},{NATS_CLIENT_TARGET}=warn")
    }
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
    fn the_nats_clients_lines_stay_at_warn_unless_named() {
        assert_eq!(with_quiet_nats_client("info"), "info,async_nats=warn");
        assert_eq!(
            with_quiet_nats_client("sse_node=debug,info"),
            "sse_node=debug,info,async_nats=warn"
        );
        assert_eq!(with_quiet_nats_client(""), "async_nats=warn");
        assert_eq!(
            with_quiet_nats_client("info,async_nats=debug"),
            "info,async_nats=debug"
        );
    }

    #[test]
    fn a_bare_word_that_is_no_level_is_refused() {
        for bad in ["warning", "verbose", "info,sse_node"] {
            let error = check_bare_words(bad).unwrap_err();
            assert!(error.contains("is not a level"), "{bad:?}: {error}");
        }
    }
}
