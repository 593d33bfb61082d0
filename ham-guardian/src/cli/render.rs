//! `--help`, bash completion and man page, generated from a [`Spec`].

use std::fmt::Write;

use super::{Opt, Spec};

const WIDTH: usize = 88;
const COLUMN: usize = 28;

/// `text` broken into lines of at most `WIDTH - indent` characters, each indented.
fn wrap(text: &str, indent: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > WIDTH {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `head` in the first column and `help` wrapped in the second (on the next line when
/// `head` does not fit).
fn two_columns(out: &mut String, head: &str, help: &str) {
    let mut lines = wrap(help, COLUMN).into_iter();
    if head.len() + 2 + 1 < COLUMN {
        let first = lines.next().unwrap_or_default();
        let _ = writeln!(out, "  {head:<w$}{first}", w = COLUMN - 2);
    } else {
        let _ = writeln!(out, "  {head}");
    }
    for l in lines {
        let _ = writeln!(out, "{:COLUMN$}{l}", "");
    }
}

fn opt_head(o: &Opt) -> String {
    let mut h = match o.short {
        Some(c) => format!("-{c}, --{}", o.long),
        None => format!("    --{}", o.long),
    };
    if let Some(v) = o.value {
        h.push(' ');
        h.push_str(v);
    }
    h
}

fn exit_line(spec: &Spec) -> String {
    let codes: Vec<String> = spec
        .exit_codes
        .iter()
        .map(|(c, m)| format!("{c} {m}"))
        .collect();
    format!("exit codes: {}.", codes.join(", "))
}

/// roff: a backslash, a hyphen (a minus in options), and a line that would start a request.
fn roff(s: &str) -> String {
    let e = s.replace('\\', "\\\\").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// The first clause of a help text (up to `; ` or ` (`, at most about 60 characters, cut
/// at a word), for completion menus.
fn short_help(help: &str) -> &str {
    let mut end = ["; ", " ("]
        .iter()
        .filter_map(|p| help.find(p))
        .min()
        .unwrap_or(help.len());
    if end > 60 {
        end = help[..60].rfind(' ').unwrap_or(end);
    }
    help[..end].trim_end_matches([',', ':', ' '])
}

/// `s` in single quotes for a POSIX shell (zsh).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` in single quotes for fish (which escapes `'` and `\\` inside them).
fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Text for inside `_arguments`' `[...]`: brackets and colons escaped.
fn zsh_bracket(s: &str) -> String {
    s.replace('[', "\\[")
        .replace(']', "\\]")
        .replace(':', "\\:")
}

impl Spec {
    /// What `--help` prints (on stdout) and a usage error shows (on stderr).
    pub fn usage(&self) -> String {
        let mut out = String::new();
        for (k, s) in self.synopsis.iter().enumerate() {
            let lead = if k == 0 { "usage:" } else { "      " };
            let _ = writeln!(out, "{lead} {} {s}", self.name);
        }
        if !self.commands.is_empty() {
            out.push_str("commands:\n");
            for c in self.commands {
                two_columns(
                    &mut out,
                    format!("{} {}", c.name, c.args).trim_end(),
                    c.help,
                );
            }
        }
        out.push_str("options:\n");
        for o in self.options {
            two_columns(&mut out, &opt_head(o), o.help);
        }
        for n in self.notes {
            out.push_str(&wrap(n, 0).join("\n"));
            out.push('\n');
        }
        out.push_str(&wrap(&exit_line(self), 0).join("\n"));
        out
    }

    /// A bash completion script: commands for the first word, options after `-`, files
    /// after an option that takes a FILE, and the words a command's argument may be.
    pub fn bash_completion(&self) -> String {
        let func = format!("_{}", self.name.replace('-', "_"));
        // Each option as it may be written: `--long`, then `-s`.
        let spellings = |keep: fn(&Opt) -> bool| -> Vec<String> {
            self.options
                .iter()
                .filter(|o| keep(o))
                .flat_map(|o| {
                    std::iter::once(format!("--{}", o.long)).chain(o.short.map(|c| format!("-{c}")))
                })
                .collect()
        };
        let with_value = spellings(|o| o.value.is_some());
        let files = spellings(|o| o.value == Some("FILE"));
        let options: Vec<String> = self
            .options
            .iter()
            .map(|o| format!("--{}", o.long))
            .collect();
        let commands: Vec<&str> = self.commands.iter().map(|c| c.name).collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# bash completion for {name}; generated by `{name} --completions bash`.",
            name = self.name
        );
        let _ = writeln!(s, "{func}() {{");
        s.push_str(
            "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n",
        );
        s.push_str("    case \"$prev\" in\n");
        if !files.is_empty() {
            let _ = writeln!(
                s,
                "        {}) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;",
                files.join("|")
            );
        }
        s.push_str(
            "        --completions) COMPREPLY=($(compgen -W \"bash\" -- \"$cur\")); return ;;\n",
        );
        let others: Vec<&String> = with_value
            .iter()
            .filter(|o| !files.contains(o) && o.as_str() != "--completions")
            .collect();
        if !others.is_empty() {
            let list: Vec<&str> = others.iter().map(|o| o.as_str()).collect();
            let _ = writeln!(s, "        {}) return ;;", list.join("|"));
        }
        s.push_str("    esac\n");
        s.push_str("    if [[ \"$cur\" == -* ]]; then\n");
        let _ = writeln!(
            s,
            "        COMPREPLY=($(compgen -W \"{}\" -- \"$cur\")); return",
            options.join(" ")
        );
        s.push_str("    fi\n");
        if !commands.is_empty() {
            // The command is the first word that is neither an option nor an option's value.
            s.push_str("    local i command=\n");
            s.push_str("    for ((i = 1; i < COMP_CWORD; i++)); do\n");
            s.push_str("        case \"${COMP_WORDS[i]}\" in\n");
            if !with_value.is_empty() {
                let _ = writeln!(s, "            {}) ((i++)) ;;", with_value.join("|"));
            }
            s.push_str("            -*) ;;\n");
            s.push_str("            *) command=${COMP_WORDS[i]}; break ;;\n");
            s.push_str("        esac\n");
            s.push_str("    done\n");
            s.push_str("    case \"$command\" in\n");
            let _ = writeln!(
                s,
                "        '') COMPREPLY=($(compgen -W \"{}\" -- \"$cur\")) ;;",
                commands.join(" ")
            );
            for c in self.commands.iter().filter(|c| !c.words.is_empty()) {
                let _ = writeln!(
                    s,
                    "        {}) [[ \"$prev\" == {} ]] && COMPREPLY=($(compgen -W \"{}\" -- \"$cur\")) ;;",
                    c.name,
                    c.name,
                    c.words.join(" ")
                );
            }
            s.push_str("    esac\n");
        }
        s.push_str("}\n");
        let _ = writeln!(s, "complete -F {func} {}", self.name);
        s
    }

    /// A zsh completion function (`_NAME`, for a directory on `$fpath`): options with
    /// their help, files after an option that takes a FILE, the commands with their help for
    /// the first word, and the words a command's argument may be.
    pub fn zsh_completion(&self) -> String {
        let func = format!("_{}", self.name.replace('-', "_"));
        let mut s = String::new();
        let _ = writeln!(s, "#compdef {}", self.name);
        let _ = writeln!(
            s,
            "# zsh completion for {name}; generated by `{name} --completions zsh`.",
            name = self.name
        );
        let _ = writeln!(s, "{func}() {{");
        s.push_str("    local curcontext=\"$curcontext\" state line\n");
        if !self.commands.is_empty() {
            s.push_str("    local -a commands\n    commands=(\n");
            for c in self.commands {
                let _ = writeln!(
                    s,
                    "        {}",
                    sh_quote(&format!("{}:{}", c.name, short_help(c.help)))
                );
            }
            s.push_str("    )\n");
        }
        s.push_str("    _arguments -C -s \\\n");
        for o in self.options {
            let help = zsh_bracket(short_help(o.help));
            let value = match o.value {
                Some("FILE") => ":FILE:_files".to_owned(),
                Some("SHELL") => ":SHELL:(bash zsh fish)".to_owned(),
                Some(v) => format!(":{v}: "),
                None => String::new(),
            };
            // `{-c,--config}` stays outside the quotes, for the shell to expand it.
            let quoted = match o.short {
                Some(c) => format!(
                    "{}{{-{c},--{l}}}{}",
                    sh_quote(&format!("(-{c} --{l})", l = o.long)),
                    sh_quote(&format!("[{help}]{value}")),
                    l = o.long
                ),
                None => sh_quote(&format!("--{}[{help}]{value}", o.long)),
            };
            let _ = writeln!(s, "        {quoted} \\");
        }
        if self.commands.is_empty() {
            s.push_str("        '*:: :_files'\n");
        } else {
            s.push_str("        '1: :->command' \\\n        '*:: :->argument'\n");
            s.push_str("    case $state in\n");
            s.push_str("        command) _describe -t commands command commands ;;\n");
            s.push_str("        argument)\n            case $line[1] in\n");
            for c in self.commands.iter().filter(|c| !c.words.is_empty()) {
                let _ = writeln!(
                    s,
                    "                {}) (( CURRENT == 2 )) && compadd -- {} ;;",
                    c.name,
                    c.words.join(" ")
                );
            }
            s.push_str("            esac ;;\n    esac\n");
        }
        s.push_str("}\n");
        let _ = writeln!(s, "{func} \"$@\"");
        s
    }

    /// A fish completion script (for `completions/NAME.fish`).
    pub fn fish_completion(&self) -> String {
        let n = self.name;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# fish completion for {n}; generated by `{n} --completions fish`."
        );
        let _ = writeln!(s, "complete -c {n} -f");
        for o in self.options {
            let mut line = format!("complete -c {n}");
            if let Some(c) = o.short {
                let _ = write!(line, " -s {c}");
            }
            let _ = write!(line, " -l {}", o.long);
            match o.value {
                Some("FILE") => line.push_str(" -r -F"),
                Some("SHELL") => line.push_str(" -x -a 'bash zsh fish'"),
                Some(_) => line.push_str(" -x"),
                None => {}
            }
            let _ = writeln!(s, "{line} -d {}", fish_quote(short_help(o.help)));
        }
        for c in self.commands {
            let _ = writeln!(
                s,
                "complete -c {n} -n __fish_use_subcommand -a {} -d {}",
                c.name,
                fish_quote(short_help(c.help))
            );
        }
        for c in self.commands.iter().filter(|c| !c.words.is_empty()) {
            let _ = writeln!(
                s,
                "complete -c {n} -n '__fish_seen_subcommand_from {}' -a {}",
                c.name,
                fish_quote(&c.words.join(" "))
            );
        }
        s
    }

    /// A man page (roff `man` macros, in the spec's section), without a date so that it is
    /// the same on every build.
    pub fn man_page(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            ".TH {} {} \"\" \"ham {}\" \"{}\"",
            self.name.to_uppercase().replace('-', "\\-"),
            self.section,
            env!("CARGO_PKG_VERSION"),
            if self.section == 8 {
                "System Administration"
            } else {
                "User Commands"
            }
        );
        let _ = writeln!(s, ".SH NAME\n{} \\- {}", roff(self.name), roff(self.about));
        s.push_str(".SH SYNOPSIS\n");
        for (k, syn) in self.synopsis.iter().enumerate() {
            if k > 0 {
                s.push_str(".br\n");
            }
            let _ = writeln!(s, ".B {}\n{}", roff(self.name), roff(syn));
        }
        if !self.commands.is_empty() {
            s.push_str(".SH COMMANDS\n");
            for c in self.commands {
                let _ = writeln!(
                    s,
                    ".TP\n.B {}\n{}",
                    roff(format!("{} {}", c.name, c.args).trim_end()),
                    roff(c.help)
                );
            }
        }
        s.push_str(".SH OPTIONS\n");
        for o in self.options {
            let _ = writeln!(
                s,
                ".TP\n.B {}\n{}",
                roff(opt_head(o).trim_start()),
                roff(o.help)
            );
        }
        if !self.notes.is_empty() {
            s.push_str(".SH NOTES\n");
            for n in self.notes {
                let _ = writeln!(s, ".PP\n{}", roff(n));
            }
        }
        s.push_str(".SH EXIT STATUS\n");
        for (c, m) in self.exit_codes {
            let _ = writeln!(s, ".TP\n.B {c}\n{}", roff(m));
        }
        s.push_str(".SH SEE ALSO\n");
        let others: Vec<String> = [
            ("ham", 8),
            ("hamctl", 8),
            ("ham-client", 1),
            ("ham.toml", 5),
        ]
        .iter()
        .filter(|(n, _)| *n != self.name)
        .map(|(n, sec)| format!(".BR {} ({sec})", roff(n)))
        .collect();
        let _ = writeln!(s, "{}", others.join(",\n"));
        s
    }
}
