//! Every problem of a layered configuration at once (the `config` feature).
//!
//! serde stops at the first bad key, so a file with three mistakes would
//! take three starts to fix. Here the keys the defaults do not know are
//! all named first, then the configuration is read again and again with
//! each bad value put back to its default, until it reads or a bound is
//! reached, naming each bad value on the way.

use figment::{
    Figment,
    providers::Serialized,
    value::{Dict, Value},
};
use serde::de::DeserializeOwned;

/// Most bad values named in one go; past it, the rest wait for the next run.
const MAX_NAMED: usize = 64;

/// Extracts `T` from `layered`, or names every problem: keys `defaults`
/// does not have, then values that do not read as their key's type. Each
/// names its key as `section.key` and where it was set (a file, the
/// environment).
pub fn extract_all<T: DeserializeOwned>(
    defaults: &Figment,
    layered: &Figment,
) -> Result<T, Vec<String>> {
    let first = match layered.extract::<T>() {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let whole = || first.clone().into_iter().map(|e| whole_error(&e)).collect();
    let (Ok(known), Ok(mut given)) = (defaults.extract::<Dict>(), layered.extract::<Dict>()) else {
        return Err(whole());
    };
    let mut problems = Vec::new();
    drop_unknown(&known, &mut given, &mut Vec::new(), layered, &mut problems);
    while problems.len() < MAX_NAMED {
        let error = match Figment::from(Serialized::defaults(&given)).extract::<T>() {
            Ok(_) => break,
            Err(error) => error,
        };
        let path = error.path.clone();
        let reset = lookup(&known, &path)
            .cloned()
            .is_some_and(|default| replace(&mut given, &path, default));
        problems.push(describe(&path.join("."), &error.kind.to_string(), layered));
        // A problem not at a key the defaults hold cannot be put right
        // here: say it and stop.
        if !reset {
            break;
        }
    }
    if problems.is_empty() {
        return Err(whole());
    }
    Err(problems)
}

/// Removes from `given` every key `known` lacks, naming each.
fn drop_unknown(
    known: &Dict,
    given: &mut Dict,
    path: &mut Vec<String>,
    layered: &Figment,
    problems: &mut Vec<String>,
) {
    let keys: Vec<String> = given.keys().cloned().collect();
    for key in keys {
        path.push(key.clone());
        match (known.get(&key), given.get_mut(&key)) {
            (None, _) => {
                given.remove(&key);
                let section = path[..path.len() - 1].join(".");
                let expected = known.keys().cloned().collect::<Vec<_>>().join(", ");
                let why = if section.is_empty() {
                    format!("unknown section; the sections are {expected}")
                } else {
                    format!("unknown key; [{section}] has {expected}")
                };
                problems.push(describe(&path.join("."), &why, layered));
            }
            (Some(Value::Dict(_, known)), Some(Value::Dict(_, given))) => {
                drop_unknown(known, given, path, layered, problems);
            }
            _ => {}
        }
        path.pop();
    }
}

/// The value at `path` in `dict`.
fn lookup<'a>(dict: &'a Dict, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let value = dict.get(first)?;
    match (rest.is_empty(), value) {
        (true, value) => Some(value),
        (false, Value::Dict(_, inner)) => lookup(inner, rest),
        _ => None,
    }
}

/// Sets the value at `path` in `dict`; false when there is no such key.
fn replace(dict: &mut Dict, path: &[String], value: Value) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match (rest.is_empty(), dict.get_mut(first)) {
        (true, Some(slot)) => {
            *slot = value;
            true
        }
        (false, Some(Value::Dict(_, inner))) => replace(inner, rest, value),
        _ => false,
    }
}

/// `key: why (in where it was set)`; a key set by an environment variable
/// (read with `Env::prefixed(prefix).split("__")`) names the variable.
/// Where a value came from, a file by the path it was given as: figment
/// shows a file's path relative to the working directory (`..` for `/tmp`
/// seen from `/work/x`).
fn shown(source: &figment::Source) -> String {
    match source {
        figment::Source::File(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

/// An error no key is to blame for (a file that cannot be read), with the
/// file named as it was given.
fn whole_error(error: &figment::Error) -> String {
    match error
        .metadata
        .as_ref()
        .and_then(|m| Some((m, m.source.as_ref()?)))
    {
        Some((metadata, source @ figment::Source::File(_))) if error.path.is_empty() => {
            let kind = error.kind.to_string();
            format!(
                "{} (in {} {})",
                kind.trim_end(),
                shown(source),
                metadata.name
            )
        }
        _ => error.to_string(),
    }
}

/// The environment variables that set `key` (with `prefix`): the one
/// variable of a key; for a whole section (an unknown one), those of its
/// keys that are set, as the section's own name is no variable.
fn env_names(prefix: &str, key: &str) -> String {
    let name = format!("{prefix}{}", key.replace('.', "__").to_ascii_uppercase());
    let within = format!("{name}__");
    let mut set: Vec<String> = std::env::vars_os()
        .filter_map(|(variable, _)| variable.into_string().ok())
        .filter(|variable| variable.starts_with(&within))
        .collect();
    if set.is_empty() {
        return name;
    }
    set.sort();
    set.join(", ")
}

fn describe(key: &str, why: &str, layered: &Figment) -> String {
    let Some(metadata) = layered.find_metadata(key) else {
        return format!("{key}: {why}");
    };
    let env_prefix = metadata
        .name
        .strip_suffix(" environment variable(s)")
        .and_then(|prefix| prefix.strip_prefix('`')?.strip_suffix('`'));
    match (&metadata.source, env_prefix) {
        (_, Some(prefix)) => format!("{key}: {why} (set by {})", env_names(prefix, key)),
        (Some(source), None) => format!("{key}: {why} (in {} {})", shown(source), metadata.name),
        (None, None) => format!("{key}: {why} (in {})", metadata.name),
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        http: Http,
        nats: Nats,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Http {
        listen: String,
        max_connections: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nats {
        url: String,
    }

    fn defaults() -> Figment {
        Figment::from(Toml::string(
            "[http]\nlisten = \"0.0.0.0:8080\"\nmax_connections = 10\n[nats]\nurl = \"nats://n:4222\"\n",
        ))
    }

    #[test]
    fn names_every_unknown_key_and_every_bad_value() {
        let layered = defaults().merge(Toml::string(
            "[http]\nlistn = \"x\"\nmax_connections = \"lots\"\n[nats]\nurll = 1\nurl = 5\n[htp]\na = 1\n",
        ));
        let problems = extract_all::<Settings>(&defaults(), &layered).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("htp: unknown section; the sections are http, nats"));
        assert!(
            problems[1].starts_with("http.listn: unknown key; [http] has listen, max_connections")
        );
        assert!(problems[2].starts_with("nats.urll: unknown key"));
        assert!(
            problems[3].starts_with("http.max_connections: invalid type: found string \"lots\"")
        );
        assert!(problems[4].starts_with("nats.url: invalid type: found signed int `5`"));
        assert!(
            problems
                .iter()
                .all(|p| p.ends_with("(in TOML source string)")),
            "{problems:#?}"
        );
    }

    /// Files are named by the path they were given as, where figment would
    /// show one relative to the working directory (`../Cargo.toml`).
    #[test]
    fn files_are_named_as_given() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let manifest = workspace.join("Cargo.toml");
        let layered = defaults().merge(Toml::file(&manifest));
        let problems = extract_all::<Settings>(&defaults(), &layered).unwrap_err();
        let named = format!("(in {} TOML file)", manifest.display());
        assert!(
            problems.iter().any(|p| p.ends_with(&named)),
            "{named} not in {problems:#?}"
        );
        // A directory where the file should be: no key to blame.
        let layered = defaults().merge(Toml::file_exact(&workspace));
        let problems = extract_all::<Settings>(&defaults(), &layered).unwrap_err();
        let named = format!("(in {} TOML file)", workspace.display());
        assert!(
            problems
                .iter()
                .any(|p| p.ends_with(&named) && !p.contains('\n')),
            "{named} not in {problems:#?}"
        );
    }

    #[test]
    fn a_good_configuration_reads() {
        let layered = defaults().merge(Toml::string("[http]\nmax_connections = 20\n"));
        let settings = extract_all::<Settings>(&defaults(), &layered).unwrap();
        assert_eq!(settings.http.max_connections, 20);
    }
}
