//! The command lines of `ham`, `hamctl` and `ham-client`: one description of each
//! ([`Spec`]) from which its `--help`, its bash completion and its man page are generated,
//! and the parsers of `ham` and `hamctl` (through `lexopt`, as `ham-client`'s), tested
//! against that description. The generated files are kept in `docs/man/` and
//! `docs/completions/`; a test fails when they drift (`HAM_WRITE_DOCS=1` rewrites them).

#[cfg(test)]
mod config_man;
pub mod ham;
pub mod hamctl;
mod render;
mod specs;

pub use specs::{HAM, HAM_CLIENT, HAMCTL};

/// An option.
#[derive(Clone, Copy)]
pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    /// Its value's name (`FILE`), if it takes one.
    pub value: Option<&'static str>,
    pub help: &'static str,
}

/// A command (the first word after the options).
pub struct Cmd {
    pub name: &'static str,
    /// What follows the command's name (`ENTITY [--json]`).
    pub args: &'static str,
    pub help: &'static str,
    /// The words its first argument may be, for completion (`enable disable`).
    pub words: &'static [&'static str],
}

/// A program's command line.
pub struct Spec {
    pub name: &'static str,
    /// Its man page's section: 8 for the daemon and its control tool, 1 for the rest.
    pub section: u8,
    /// One line: what the program is.
    pub about: &'static str,
    /// The usage lines after the program's name.
    pub synopsis: &'static [&'static str],
    pub options: &'static [Opt],
    pub commands: &'static [Cmd],
    /// Paragraphs after the commands: defaults, environment.
    pub notes: &'static [&'static str],
    /// Its exit codes, (code, meaning).
    pub exit_codes: &'static [(i32, &'static str)],
}

/// What `--completions SHELL` and `--man` ask for (every program takes them).
pub enum Generate {
    Completions(String),
    Man,
}

impl Generate {
    /// The generated text, or why not.
    pub fn render(&self, spec: &Spec) -> Result<String, String> {
        match self {
            Generate::Man => Ok(spec.man_page()),
            Generate::Completions(sh) => match sh.as_str() {
                "bash" => Ok(spec.bash_completion()),
                "zsh" => Ok(spec.zsh_completion()),
                "fish" => Ok(spec.fish_completion()),
                _ => Err(format!(
                    "--completions: `{sh}` is not a shell completions are made for (bash, zsh, fish)"
                )),
            },
        }
    }
}

/// A usage error: the message `PROGRAM: ...`, the synopsis and where the rest is (the whole
/// help would bury the one line that matters).
pub fn usage_error(spec: &Spec, msg: &str) -> String {
    let mut s = format!("{}: {msg}\n", spec.name);
    for (k, syn) in spec.synopsis.iter().enumerate() {
        let lead = if k == 0 { "usage:" } else { "      " };
        s.push_str(&format!("{lead} {} {syn}\n", spec.name));
    }
    s.push_str(&format!(
        "`{} --help` lists every command and option",
        spec.name
    ));
    s
}

/// `lexopt`'s errors in the words of our usage messages.
pub(crate) fn lexopt_error(e: lexopt::Error) -> String {
    e.to_string()
}

/// `-5` as a word (a raise's negative VALUE), not as the option `-5`.
pub fn negative_number(p: &mut lexopt::Parser, first: char) -> Result<String, lexopt::Error> {
    use lexopt::ValueExt;
    let rest = p.optional_value().map(|v| v.string()).transpose()?;
    Ok(format!("-{first}{}", rest.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man pages and completions in `docs/` are what the specs generate, and
    /// ham.toml(5) is the README's configuration reference
    /// (`HAM_WRITE_DOCS=1 cargo test -p ham-guardian --lib cli` rewrites them).
    #[test]
    fn generated_docs_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = root.join("docs");
        let write = std::env::var_os("HAM_WRITE_DOCS").is_some();
        let mut stale = Vec::new();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let mut files = vec![(
            docs.join("man/ham.toml.5"),
            super::config_man::man_page(&readme),
        )];
        for spec in [&HAM, &HAMCTL, &HAM_CLIENT] {
            files.extend([
                (
                    docs.join(format!("man/{}.{}", spec.name, spec.section)),
                    spec.man_page(),
                ),
                (
                    docs.join(format!("completions/{}.bash", spec.name)),
                    spec.bash_completion(),
                ),
                (
                    docs.join(format!("completions/_{}", spec.name)),
                    spec.zsh_completion(),
                ),
                (
                    docs.join(format!("completions/{}.fish", spec.name)),
                    spec.fish_completion(),
                ),
            ]);
        }
        {
            for (path, text) in files {
                if write {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, &text).unwrap();
                } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    stale.push(path.display().to_string());
                }
            }
        }
        assert!(
            stale.is_empty(),
            "out of date (HAM_WRITE_DOCS=1 cargo test -p ham-guardian --lib cli): {stale:?}"
        );
    }

    #[test]
    fn usage_lists_every_option_and_command() {
        for spec in [&HAM, &HAMCTL, &HAM_CLIENT] {
            let u = spec.usage();
            assert!(u.starts_with(&format!("usage: {} ", spec.name)), "{u}");
            for o in spec.options {
                assert!(
                    u.contains(&format!("--{}", o.long)),
                    "{}: --{}",
                    spec.name,
                    o.long
                );
            }
            for c in spec.commands {
                assert!(
                    u.contains(&format!("\n  {} ", c.name))
                        || u.contains(&format!("\n  {}\n", c.name)),
                    "{}: {}",
                    spec.name,
                    c.name
                );
            }
            assert!(u.contains("exit codes: 0 "), "{u}");
        }
    }

    #[test]
    fn completions_are_made_for_bash_zsh_and_fish() {
        assert!(
            Generate::Completions("bash".into())
                .render(&HAMCTL)
                .unwrap()
                .contains("complete -F _hamctl hamctl")
        );
        let e = Generate::Completions("tcsh".into())
            .render(&HAMCTL)
            .unwrap_err();
        assert!(e.contains("`tcsh`") && e.contains("bash, zsh, fish"), "{e}");
    }

    /// `script`, then `line` completed at its end, in bash (`None` without bash).
    fn complete(spec: &Spec, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let script = format!(
            "{}\nCOMP_WORDS=({}); COMP_CWORD={}; _{}; echo \"${{COMPREPLY[*]}}\"",
            spec.bash_completion(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            spec.name.replace('-', "_"),
        );
        match std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
        {
            Ok(o) => {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                Some(String::from_utf8_lossy(&o.stdout).trim().to_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("bash: {e}"),
        }
    }

    #[test]
    fn completions_complete_commands_options_and_words() {
        let Some(got) = complete(&HAMCTL, "hamctl -c x.toml de") else {
            return;
        };
        assert_eq!(got, "device-restart");
        assert_eq!(
            complete(&HAMCTL, "hamctl device-restart e").unwrap(),
            "enable"
        );
        assert_eq!(complete(&HAMCTL, "hamctl --tim").unwrap(), "--timeout");
        assert_eq!(complete(&HAMCTL, "hamctl stop w").unwrap(), "");
        assert_eq!(
            complete(&HAM_CLIENT, "ham-client sub").unwrap(),
            "subscribe"
        );
        assert_eq!(complete(&HAM, "ham --check").unwrap(), "--check-config");
    }
}
