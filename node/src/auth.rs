//! Who may read a private topic: where a request carries its token.
//!
//! A topic whose stream metadata says `sse.access: private` is read only with
//! a token. [`tokens_from_request`] finds it, first to last, in the
//! `Authorization: Bearer` header, the `access_token` query parameter (when
//! `auth.query_parameter` allows it) and the cookie `auth.cookie_name` (each
//! such cookie, when a browser sends several); an `Authorization` header of
//! another scheme is passed over. The
//! rules for accepting it live in `sse_token`, shared with `ssectl token
//! check`, so the tool and the node cannot disagree.

use axum::http::{HeaderMap, header};
pub use sse_token::{AuthError, Authorized, ConfigProblems, Verifier};

use crate::config::AuthConfig;

/// The query parameter that may carry a token.
pub const QUERY_PARAMETER: &str = "access_token";

/// The tokens a request carries, to be tried in order: the one of
/// `Authorization: Bearer`, else the `access_token` query parameter (if
/// allowed), else every cookie named `auth.cookie_name`. Several cookies
/// share a name when a site set it for more than one domain or path (an
/// expired one for the host and a fresh one for the domain, say); the
/// browser sends them all and cannot tell which is current, so each is
/// tried. Empty when the request carries none.
pub fn tokens_from_request(
    config: &AuthConfig,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Vec<String>, AuthError> {
    // An `Authorization` header of another scheme is not ours: browsers
    // send `Basic` on their own to a site behind basic auth, and the token
    // is then in the query or the cookie. It is refused only when nothing
    // else carries a token.
    // `Bearer` with no token carries none, as no header does: HTTP/1.1
    // reaches here with the value's trailing space trimmed and HTTP/2
    // without, and both must read it alike.
    let mut other_scheme = false;
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok().map(str::trim);
        match value.map(|v| v.split_once(' ').unwrap_or((v, ""))) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                let token = token.trim();
                if !token.is_empty() {
                    return Ok(vec![token.to_owned()]);
                }
            }
            _ => other_scheme = true,
        }
    }
    if config.query_parameter
        && let Some(token) = query_token.filter(|t| !t.is_empty())
    {
        return Ok(vec![token.to_owned()]);
    }
    let mut cookies = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=')
                && name == config.cookie_name
                && !token.is_empty()
            {
                cookies.push(token.trim_matches('"').to_owned());
            }
        }
    }
    if cookies.is_empty() && other_scheme {
        return Err(AuthError::NotBearer);
    }
    Ok(cookies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            cookie_name: "sse_token".into(),
            query_parameter: true,
            jwt: sse_token::JwtConfig::default(),
        }
    }

    #[test]
    fn reads_tokens_from_each_place() {
        let c = config();
        let mut h = HeaderMap::new();
        assert_eq!(tokens_from_request(&c, &h, None), Ok(vec![]));
        assert_eq!(tokens_from_request(&c, &h, Some("q")), Ok(vec!["q".into()]));
        h.insert(header::COOKIE, "a=b; sse_token=c".parse().unwrap());
        assert_eq!(tokens_from_request(&c, &h, None), Ok(vec!["c".into()]));
        assert_eq!(tokens_from_request(&c, &h, Some("q")), Ok(vec!["q".into()]));
        h.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(tokens_from_request(&c, &h, Some("q")), Ok(vec!["h".into()]));
        // A Bearer with no token carries none, with or without the space
        // (HTTP/2 keeps it, HTTP/1.1 trims it): the query or the cookie
        // speaks, or nothing does.
        for empty in ["Bearer ", "Bearer", "bearer   "] {
            h.insert(header::AUTHORIZATION, empty.parse().unwrap());
            assert_eq!(tokens_from_request(&c, &h, None), Ok(vec!["c".into()]));
            assert_eq!(tokens_from_request(&c, &h, Some("q")), Ok(vec!["q".into()]));
            let mut alone = HeaderMap::new();
            alone.insert(header::AUTHORIZATION, empty.parse().unwrap());
            assert_eq!(tokens_from_request(&c, &alone, None), Ok(vec![]));
        }
    }

    #[test]
    fn another_scheme_gives_way_to_the_query_and_the_cookie() {
        let c = config();
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(tokens_from_request(&c, &h, None), Err(AuthError::NotBearer));
        assert_eq!(tokens_from_request(&c, &h, Some("q")), Ok(vec!["q".into()]));
        h.insert(header::COOKIE, "sse_token=c".parse().unwrap());
        assert_eq!(tokens_from_request(&c, &h, None), Ok(vec!["c".into()]));
        // Every cookie of the name, in the order sent.
        h.append(header::COOKIE, "x=1; sse_token=d".parse().unwrap());
        assert_eq!(
            tokens_from_request(&c, &h, None),
            Ok(vec!["c".into(), "d".into()])
        );
        h.insert(header::AUTHORIZATION, "BEARER h".parse().unwrap());
        assert_eq!(tokens_from_request(&c, &h, None), Ok(vec!["h".into()]));
    }
}
