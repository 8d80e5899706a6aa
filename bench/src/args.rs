//! Command-line flags: `--name value` pairs, a flag may repeat.

use std::{collections::HashMap, str::FromStr};

use anyhow::{Context as _, bail};

/// Parsed `--name value` flags.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, Vec<String>>,
}

impl Args {
    /// Parses flags; every flag takes one value (`--quick` style switches
    /// are written `--quick 1`).
    pub fn parse(items: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            let Some(name) = item.strip_prefix("--") else {
                bail!("unexpected argument {item:?}");
            };
            let value = items
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            values.entry(name.to_owned()).or_default().push(value);
        }
        Ok(Self { values })
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.last().map(String::as_str)
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// The value of `name` parsed, or `default`.
    pub fn or<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("bad --{name} {v:?}: {e}")),
        }
    }

    /// The value of `name`, which must be given.
    pub fn required(&self, name: &str) -> anyhow::Result<&str> {
        self.get(name)
            .with_context(|| format!("--{name} is required"))
    }
}
