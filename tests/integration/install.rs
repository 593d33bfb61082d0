//! `scripts/install.sh` into a temporary prefix, with the binaries Cargo built: what lands
//! where, man pages that render, completions that load, init files with the installed
//! paths, a sample configuration that validates and is never overwritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn install(prefix: &Path, etc: &Path) -> Output {
    let bins = Path::new(HAM).parent().unwrap();
    assert!(
        bins.join("ham-cluster").exists(),
        "no ham-cluster beside ham (cargo build -p ham-cluster, or cargo test --workspace)"
    );
    run(Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .arg("--from")
        .arg(bins)
        .arg("--sysconfdir")
        .arg(etc)
        .arg(prefix))
}

/// `man`'s output without its overstrikes (`X\x08X` bold, `_\x08X` underline).
fn plain(out: &[u8]) -> String {
    let t = text(out);
    let mut s = String::with_capacity(t.len());
    let mut it = t.chars().peekable();
    while let Some(c) = it.next() {
        if it.peek() == Some(&'\u{8}') {
            it.next();
            continue;
        }
        s.push(c);
    }
    s
}

/// Whether `program` runs here; `None` (skipped, said on stderr) when it does not.
fn have(program: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping the {program} check: no {program} here");
    }
    ok
}

#[test]
fn install_puts_binaries_sdk_man_pages_completions_init_files_and_a_sample_config_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("usr");
    let etc = tmp.path().join("etc");
    install(&prefix, &etc);

    for f in [
        "bin/ham",
        "bin/hamctl",
        "bin/ham-client",
        "bin/ham-cluster",
        "lib/libham.so",
        "include/ham.h",
        "include/ha/ham.h",
        "lib/pkgconfig/ham.pc",
        "share/bash-completion/completions/hamctl",
        "share/zsh/site-functions/_hamctl",
        "share/fish/vendor_completions.d/hamctl.fish",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }

    // Man pages: each renders, without a warning from groff.
    for (page, title) in [
        ("man8/ham.8", "HAM(8)"),
        ("man8/hamctl.8", "HAMCTL(8)"),
        ("man1/ham-client.1", "HAM-CLIENT(1)"),
        ("man5/ham.toml.5", "HAM.TOML(5)"),
    ] {
        let path = prefix.join("share/man").join(page);
        let out = run(Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80"));
        let shown = plain(&out.stdout);
        assert!(shown.contains(title), "{page}: {shown}");
        assert!(shown.contains("NAME"), "{page}: {shown}");
        assert!(
            text(&out.stderr).trim().is_empty(),
            "{page}: groff warns: {}",
            text(&out.stderr)
        );
    }
    let toml5 = plain(
        &run(Command::new("man")
            .arg("-l")
            .arg(prefix.join("share/man/man5/ham.toml.5"))
            .env("MANWIDTH", "200"))
        .stdout,
    );
    for key in [
        "liveness_timeout",
        "restart_command",
        "magic_close",
        "textfile",
    ] {
        assert!(toml5.contains(key), "ham.toml(5) lacks {key}");
    }

    // Completions: bash loads them and completes hamctl's commands and their words.
    let bash = |line: &str| -> String {
        let words: Vec<&str> = line.split(' ').collect();
        let script = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _hamctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            prefix
                .join("share/bash-completion/completions/hamctl")
                .display(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1
        );
        text(&run(Command::new("bash").arg("-c").arg(script)).stdout)
    };
    let got = bash("hamctl st");
    assert!(
        got.lines().collect::<Vec<_>>() == ["status", "start", "stop"],
        "{got}"
    );
    assert_eq!(bash("hamctl device-restart "), "enable\ndisable\n");
    if have("zsh") {
        run(Command::new("zsh")
            .arg("-n")
            .arg(prefix.join("share/zsh/site-functions/_hamctl")));
    }
    if have("fish") {
        let out = run(Command::new("fish").arg("-c").arg(format!(
            "source {}; complete -C'hamctl met'",
            prefix
                .join("share/fish/vendor_completions.d/hamctl.fish")
                .display()
        )));
        assert!(
            text(&out.stdout).starts_with("metrics\t"),
            "{}",
            text(&out.stdout)
        );
    }

    // The sample configuration validates with the installed ham.
    let conf = etc.join("ham/ham.toml");
    let out = run(Command::new(prefix.join("bin/ham"))
        .arg("--check-config")
        .arg(&conf));
    assert!(text(&out.stdout).contains("valid"), "{}", text(&out.stdout));

    // Init files name the installed binaries and configuration; no placeholder is left.
    let bin = prefix.join("bin");
    for f in ["systemd/ham.service", "busybox/inittab", "openwrt/ham"] {
        let t = std::fs::read_to_string(prefix.join("share/ham").join(f)).unwrap();
        assert!(!t.contains('@'), "{f}: a placeholder is left:\n{t}");
        assert!(
            t.contains(&format!(
                "{}/ham --config {}",
                bin.display(),
                conf.display()
            )) || t.contains(&format!("{}/ham --config \"$CONFIG\"", bin.display())),
            "{f}:\n{t}"
        );
    }
    let unit = prefix.join("share/ham/systemd/ham.service");
    if have("systemd-analyze") {
        // systemd's own check of the unit (the man pages it names are looked up too).
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .env("MANPATH", prefix.join("share/man"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out.stderr).trim().is_empty(),
            "systemd-analyze verify: {}",
            text(&out.stderr)
        );
    }
    run(Command::new("sh")
        .arg("-n")
        .arg(prefix.join("share/ham/openwrt/ham")));

    // pkg-config finds the SDK where it was installed.
    if have("pkg-config") {
        let out = run(Command::new("pkg-config")
            .args(["--cflags", "--libs", "ham"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
        assert!(
            text(&out.stdout).contains(&format!("-I{}", prefix.join("include").display())),
            "{}",
            text(&out.stdout)
        );
    }

    // Installing again never overwrites the configuration in use.
    std::fs::write(&conf, "[ham]\nname = \"mine\"\n").unwrap();
    let out = install(&prefix, &etc);
    assert!(
        text(&out.stdout).contains("ham.toml.sample"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "[ham]\nname = \"mine\"\n"
    );
    assert!(etc.join("ham/ham.toml.sample").exists());
}
