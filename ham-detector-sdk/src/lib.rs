//! `ham-detector-sdk`: the client side of ham.
//!
//! This first piece tells a process which ham instance it belongs to. A process that ham
//! starts inherits `HAM_INSTANCE`, `HAM_RUN_DIR`, `HAM_CONFIG` and `HAM_ENTITY`; any other
//! process names its instance with `HAM_CONFIG` (the variable `hamctl` reads), or uses the
//! default instance. Heartbeats and the detector ring build on this.
#![deny(unsafe_code)]

use std::path::PathBuf;

/// Default configuration file of the default instance.
pub const DEFAULT_CONFIG: &str = "/etc/ham/ham.toml";

/// How this process found its ham instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instance {
    /// Started by ham: the instance name, its run directory, and this process's entity name.
    Supervised {
        name: String,
        run_dir: PathBuf,
        config: Option<PathBuf>,
        entity: String,
    },
    /// Not started by ham: the configuration file that names the instance.
    Config(PathBuf),
}

/// Finds the instance from an environment lookup (`std::env::var` in [`from_env`]).
pub fn find(get: impl Fn(&str) -> Option<String>) -> Instance {
    match (get("HAM_INSTANCE"), get("HAM_RUN_DIR"), get("HAM_ENTITY")) {
        (Some(name), Some(run_dir), Some(entity)) if !name.is_empty() => Instance::Supervised {
            name,
            run_dir: run_dir.into(),
            config: get("HAM_CONFIG").map(PathBuf::from),
            entity,
        },
        _ => Instance::Config(
            get("HAM_CONFIG")
                .filter(|c| !c.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from),
        ),
    }
}

/// Finds the instance of the current process.
pub fn from_env() -> Instance {
    find(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn supervised_process_uses_inherited_variables() {
        let got = find(env(&[
            ("HAM_INSTANCE", "demo"),
            ("HAM_RUN_DIR", "/run/ham"),
            ("HAM_ENTITY", "web"),
            ("HAM_CONFIG", "/etc/ham/demo.toml"),
        ]));
        assert_eq!(
            got,
            Instance::Supervised {
                name: "demo".into(),
                run_dir: "/run/ham".into(),
                config: Some("/etc/ham/demo.toml".into()),
                entity: "web".into()
            }
        );
    }

    #[test]
    fn other_processes_use_ham_config_or_the_default() {
        assert_eq!(
            find(env(&[("HAM_CONFIG", "/x.toml")])),
            Instance::Config("/x.toml".into())
        );
        assert_eq!(find(env(&[])), Instance::Config(DEFAULT_CONFIG.into()));
        // A partial inheritance is not trusted.
        assert_eq!(
            find(env(&[("HAM_INSTANCE", "demo")])),
            Instance::Config(DEFAULT_CONFIG.into())
        );
    }
}
