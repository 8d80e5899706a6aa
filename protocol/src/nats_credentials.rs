//! NATS's own ways to authenticate, beside the user and password or token
//! of `nats.url` (see `nats_url`): a credentials file (`nats.creds_file`:
//! a user JWT and its nkey seed, as `nsc` writes them for servers in
//! operator mode and Synadia Cloud hands them out), or a user nkey seed
//! (`nats.nkey_seed_file`) for a server whose config lists the user's
//! public nkey. Node and admin read these keys here, once. Needs the `nats`
//! feature.

use async_nats::ConnectOptions;

/// The keys as configured: paths, empty when unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsCredentialFiles<'a> {
    /// `nats.creds_file`.
    pub creds_file: &'a str,
    /// `nats.nkey_seed_file`.
    pub nkey_seed_file: &'a str,
}

/// How to authenticate, read from the files and checked.
#[derive(Clone, Default)]
pub enum NatsCredentials {
    /// Nothing beyond what `nats.url` carries.
    #[default]
    None,
    /// A credentials file's text.
    Creds(String),
    /// A user nkey seed.
    NkeySeed(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.write_str(match self {
            Self::None => "None",
            Self::Creds(_) => "Creds(***)",
            Self::NkeySeed(_) => "NkeySeed(***)",
        })
    }
}

impl NatsCredentials {
    /// Reads and checks the files; `url_has_credentials` says whether
    /// `nats.url` carries a user or token, which would compete with them.
    /// Every problem names its key.
    pub fn load(
        files: NatsCredentialFiles<'_>,
        url_has_credentials: bool,
    ) -> Result<Self, Vec<String>> {
        let (creds, seed) = (files.creds_file, files.nkey_seed_file);
        let mut problems = Vec::new();
        if !creds.is_empty() && !seed.is_empty() {
            problems.push("nats.creds_file, nats.nkey_seed_file: set one, not both".to_owned());
        }
        if url_has_credentials && !(creds.is_empty() && seed.is_empty()) {
            let key = if creds.is_empty() {
                "nats.nkey_seed_file"
            } else {
                "nats.creds_file"
            };
            problems.push(format!(
                "{key}: nats.url carries a user or token too; use one way to authenticate"
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let read = |key: &str, path: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| vec![format!("{key}: cannot read {path}: {e}")])
        };
        if !creds.is_empty() {
            let text = read("nats.creds_file", creds)?;
            if let Err(error) = ConnectOptions::with_credentials(&text) {
                return Err(vec![format!(
                    "nats.creds_file: {creds} is not a NATS credentials file (a user JWT and \
                     its nkey seed, as `nsc generate creds` writes): {error}"
                )]);
            }
            return Ok(Self::Creds(text));
        }
        if !seed.is_empty() {
            let text = read("nats.nkey_seed_file", seed)?;
            let text = text.trim();
            return match nkeys::KeyPair::from_seed(text) {
                Ok(key) if key.public_key().starts_with('U') => Ok(Self::NkeySeed(text.to_owned())),
                Ok(_) => Err(vec![format!(
                    "nats.nkey_seed_file: {seed} holds an nkey seed, but not a user's (SU…)"
                )]),
                Err(_) => Err(vec![format!(
                    "nats.nkey_seed_file: {seed} holds no nkey seed (one line, SU…, as \
                     `nk -gen user` writes)"
                )]),
            };
        }
        Ok(Self::None)
    }

    /// `options` authenticating this way; a credentials file that no
    /// longer parses (`load` checked it) says why.
    pub fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, String> {
        match self {
            Self::None => Ok(options),
            Self::Creds(text) => options
                .credentials(text)
                .map_err(|e| format!("nats.creds_file: {e}")),
            Self::NkeySeed(seed) => Ok(options.nkey(seed.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "sse-nats-credentials-{name}-{}",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_user_seed_is_read_and_never_shown() {
        let user = nkeys::KeyPair::new_user();
        let path = temp_file("user", &format!("{}\n", user.seed().unwrap()));
        let loaded = NatsCredentials::load(
            NatsCredentialFiles {
                creds_file: "",
                nkey_seed_file: path.to_str().unwrap(),
            },
            false,
        )
        .unwrap();
        assert!(
            matches!(&loaded, NatsCredentials::NkeySeed(seed) if *seed == user.seed().unwrap())
        );
        assert_eq!(format!("{loaded:?}"), "NkeySeed(***)");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_or_competing_credentials_are_named_by_their_key() {
        let account = nkeys::KeyPair::new_account();
        let account_seed = temp_file("account", &account.seed().unwrap());
        let not_a_seed = temp_file("garbage", "hello\n");
        fn seed_of(path: &std::path::Path) -> NatsCredentialFiles<'_> {
            NatsCredentialFiles {
                creds_file: "",
                nkey_seed_file: path.to_str().unwrap(),
            }
        }
        let said = |result: Result<NatsCredentials, Vec<String>>| result.unwrap_err().join("\n");
        assert!(
            said(NatsCredentials::load(seed_of(&account_seed), false)).contains("not a user's")
        );
        assert!(
            said(NatsCredentials::load(seed_of(&not_a_seed), false)).contains("holds no nkey seed")
        );
        assert!(
            said(NatsCredentials::load(seed_of(&not_a_seed), true))
                .starts_with("nats.nkey_seed_file: nats.url carries a user or token too")
        );
        let both = NatsCredentialFiles {
            creds_file: not_a_seed.to_str().unwrap(),
            nkey_seed_file: not_a_seed.to_str().unwrap(),
        };
        assert!(said(NatsCredentials::load(both, false)).contains("set one, not both"));
        let creds = NatsCredentialFiles {
            creds_file: not_a_seed.to_str().unwrap(),
            nkey_seed_file: "",
        };
        assert!(said(NatsCredentials::load(creds, false)).starts_with("nats.creds_file:"));
        let absent = NatsCredentialFiles {
            creds_file: "/nonexistent/user.creds",
            nkey_seed_file: "",
        };
        assert!(said(NatsCredentials::load(absent, false)).contains("cannot read"));
        std::fs::remove_file(account_seed).unwrap();
        std::fs::remove_file(not_a_seed).unwrap();
    }
}
