//! Core files (issue 14): a service that crashes leaves a core that ham collects into
//! `cores_dir`, and `hamctl cores` lists it with its signal.

use serde_json::Value;

use crate::util::*;

#[test]
fn a_crash_leaves_a_core_listed_by_hamctl_cores_with_its_signal() {
    let work = tempfile::tempdir().unwrap();
    let pattern = ham_guardian::cores::Pattern::of_system().unwrap();
    // The program is `sh`, killed by its own SIGSEGV in the folder given.
    let seen = work.path().join("seen");
    // Its `core` condition's command is told where the core is.
    let body = format!(
        "[[entity]]\nname = \"crash\"\ncommand = [\"/bin/sh\", \"-c\", \"kill -SEGV $$\"]\n\
         cwd = \"{}\"\nrestart = \"never\"\ncores = true\n\
         [[entity.condition]]\non = \"core\"\n[[entity.condition.action]]\ndo = \"execute\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo $HAM_CORE > {}\"]\n",
        work.path().display(),
        seen.display()
    );
    let ham = Ham::start_with("cores", "state_dir = \"state\"\n", &body, &[]);
    ham.wait_for("crash exited", |s| entity(s, "crash")["state"] == "exited");
    if let ham_guardian::cores::Pattern::Pipe(prog) = pattern {
        // This machine's cores go to its own handler: ham says so, and collects nothing.
        wait_until(&ham, "the log line", || {
            ham.stderr().contains("handled by the system")
        });
        eprintln!("cores: core_pattern is a pipe to {prog}; not collected");
        return;
    }
    wait_until(&ham, "the core collected", || {
        ham.stderr().contains("crash: core of pid")
    });
    let v: Value = serde_json::from_slice(&ham.ctl(&["cores", "--json"]).stdout).unwrap();
    let cores = v.as_array().unwrap();
    assert_eq!(cores.len(), 1, "{v}");
    assert_eq!(cores[0]["entity"], "crash");
    assert_eq!(cores[0]["signal"], 11);
    assert!(cores[0]["bytes"].as_u64().unwrap() > 0);
    let path = cores[0]["path"].as_str().unwrap();
    assert!(
        path.starts_with(&ham.dir.path().join("state").display().to_string()),
        "{path}"
    );
    // Moved, not copied: nothing is left where the kernel wrote it.
    assert!(!work.path().join("core").exists());
    // The shell creates the file before `echo` writes to it: wait for the whole line.
    wait_until(&ham, "the core condition's command", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.ends_with('\n'))
    });
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), path);
    let table = text(&ham.ctl(&["cores", "crash"]).stdout);
    assert!(table.contains("crash") && table.contains(" 11 "), "{table}");
}
