//! Credentials in a NATS server URL (`nats://user:password@host:4222`, or
//! `nats://token@host:4222`), which async-nats parses but does not send:
//! it takes credentials only from its connect options. Needs the `nats`
//! feature.

use std::borrow::Cow;

use async_nats::{ConnectOptions, ServerAddr};

/// One server URL of `nats.url`, checked: NATS's own protocol over TCP,
/// `nats://` or `tls://` (or a bare `host:port`). WebSocket URLs (`ws://`,
/// `wss://`) are refused: this client would speak the TCP protocol to a
/// WebSocket port, and never get an answer it understands.
pub fn parse(url: &str) -> Result<ServerAddr, String> {
    let addr: ServerAddr = url
        .parse()
        .map_err(|e| format!("{:?} is not a NATS server URL: {e}", redact(url)))?;
    if addr.is_websocket() {
        return Err(format!(
            "{:?}: NATS over WebSocket is not supported; use the servers' client port, \
             nats:// or tls://",
            redact(url)
        ));
    }
    Ok(addr)
}

/// `options` with the credentials of the first of `addrs` that carries any:
/// its user and password, or, for a user without a password, a token.
pub fn with_url_credentials(options: ConnectOptions, addrs: &[ServerAddr]) -> ConnectOptions {
    let Some(addr) = addrs.iter().find(|addr| addr.username().is_some()) else {
        return options;
    };
    let user = decode(addr.username().unwrap_or_default());
    match addr.password() {
        Some(password) => options.user_and_password(user, decode(password)),
        None => options.token(user),
    }
}

/// `url` (or a comma-separated list of URLs) with every password or token
/// written as `***`, for logs and error messages.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_owned(),
                    };
                    let scheme = if scheme.is_empty() {
                        String::new()
                    } else {
                        format!("{scheme}://")
                    };
                    format!("{scheme}{user}@{host}")
                }
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL's percent-encoded user or password, decoded.
fn decode(part: &str) -> String {
    match percent_encoding::percent_decode_str(part).decode_utf8() {
        Ok(Cow::Borrowed(text)) => text.to_owned(),
        Ok(Cow::Owned(text)) => text,
        Err(_) => part.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("nats://node:s3cret@a:4222, nats://tok@b:4222,nats://c:4222"),
            "nats://node:***@a:4222, nats://***@b:4222,nats://c:4222"
        );
        assert_eq!(redact("a:4222"), "a:4222");
    }

    #[test]
    fn websocket_urls_are_refused_and_the_rest_parsed() {
        assert_eq!(parse("nats://a:4222").unwrap().port(), 4222);
        assert_eq!(parse("tls://a:4223").unwrap().port(), 4223);
        assert_eq!(parse("a:4224").unwrap().port(), 4224);
        for url in ["ws://a:8080", "wss://u:secret@a:443"] {
            let why = parse(url).unwrap_err();
            assert!(why.contains("WebSocket"), "{why}");
            assert!(!why.contains("secret"), "{why}");
        }
        assert!(
            parse("nats://a:port")
                .unwrap_err()
                .contains("is not a NATS server URL")
        );
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        assert_eq!(decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(decode("plain"), "plain");
    }
}
