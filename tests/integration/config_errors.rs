//! A broken configuration: `ham` names the file, line, column and key, and starts nothing.

use std::process::Command;

use crate::util::*;

struct Broken {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    name: String,
}

/// A configuration whose first entity would leave a marker file if it were ever started,
/// followed by `bad`.
fn broken(bad: &str) -> Broken {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("bad");
    let body = format!(
        "[[entity]]\nname = \"marker\"\ncommand = [\"/bin/sh\", \"-c\", \"touch started; sleep 1000\"]\ncwd = \"{}\"\n\n{bad}",
        dir.path().display()
    );
    let config = write_config(dir.path(), &name, &body);
    Broken { dir, config, name }
}

fn refused(b: &Broken, line: usize, col: usize, words: &str) {
    let out = Command::new(HAM).arg("-c").arg(&b.config).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let place = format!("{}:{line}:{col}: ", b.config.display());
    assert!(err.contains(&place), "expected `{place}` in: {err}");
    assert!(err.contains(words), "expected `{words}` in: {err}");
    assert!(
        !b.dir.path().join("started").exists(),
        "an entity was started"
    );
    assert!(!std::path::Path::new(&format!("/dev/shm/ham.{}.state", b.name)).exists());
    assert!(!b.dir.path().join("run").exists(), "run_dir was created");

    // --check-config says the same and exits 1 too.
    let out = Command::new(HAM)
        .arg("--check-config")
        .arg(&b.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&place));
}

// The header written by write_config takes lines 1–5 and a blank line; the marker entity
// takes lines 7–10 and a blank line; `bad` starts on line 12.

#[test]
fn unknown_key() {
    let b = broken("[[entity]]\nname = \"x\"\ncommand = [\"true\"]\nrestrat = \"never\"\n");
    refused(&b, 15, 1, "unknown key `restrat`; did you mean `restart`?");
}

#[test]
fn bad_type() {
    let b = broken("[[entity]]\nname = \"x\"\ncommand = \"true\"\n");
    refused(&b, 14, 11, "`entity[1].command`: expected a list");
}

#[test]
fn duplicate_name() {
    let b = broken("[[entity]]\nname = \"marker\"\ncommand = [\"true\"]\n");
    refused(
        &b,
        13,
        8,
        "duplicate entity name `marker` (first defined on line 8)",
    );
}

#[test]
fn missing_executable() {
    let b = broken("[[entity]]\nname = \"x\"\ncommand = [\"/no/such/program\"]\n");
    refused(&b, 14, 11, "/no/such/program does not exist");
}

#[test]
fn bad_stop_timeout() {
    let b = broken("[[entity]]\nname = \"x\"\ncommand = [\"true\"]\nstop_timeout = \"soon\"\n");
    refused(&b, 15, 16, "`entity[1].stop_timeout`");
}

#[test]
fn toml_syntax_error() {
    let b = broken("[[entity]\nname = \"x\"\n");
    refused(&b, 12, 10, "unclosed array table");
}

#[test]
fn check_config_accepts_a_valid_file_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &unique_name("ok"), &sleeper("a"));
    let out = Command::new(HAM)
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid"));
    assert!(!dir.path().join("run").exists());
}

#[test]
fn the_quickstart_example_is_valid() {
    // Its commands point at the release build of the demo programs; check the rest of it by
    // pointing them at a real executable.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text_in = std::fs::read_to_string(root.join("examples/quickstart.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("quickstart.toml");
    let patched = text_in.replace("../target/release/ham-demo-", "/bin/");
    let patched = patched
        .replace("/bin/flaky", "/bin/true")
        .replace("/bin/ticker", "/bin/true")
        .replace("/bin/oneshot", "/bin/true");
    std::fs::write(&copy, patched).unwrap();
    let out = Command::new(HAM)
        .arg("--check-config")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3 entities"));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(HAM).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid option '--bogus'") && err.contains("usage: ham "),
        "{err}"
    );
    let out = Command::new(HAMCTL).arg("-c").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("missing argument for option '-c'"), "{err}");
    // --help goes to stdout, exit 0, for each program; so does a man page.
    for bin in [HAM, HAMCTL] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).starts_with("usage: "),
            "{}",
            text(&out.stdout)
        );
        let out = Command::new(bin).arg("--man").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).starts_with(".TH "),
            "{}",
            text(&out.stdout)
        );
    }
}
