//! `include/ham.h` is generated from `src/capi.rs` by cbindgen and committed: this test
//! fails when they drift apart (and rewrites the header with `HAM_WRITE_HEADER=1`).

#[test]
fn the_committed_header_matches_the_c_api() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/src/capi.rs"))
        .generate()
        .expect("the C API parses")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = format!("{dir}/include/ham.h");
    if std::env::var_os("HAM_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("include/ham.h written");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ham.h is out of date with src/capi.rs: run \
         `HAM_WRITE_HEADER=1 cargo test -p ham-detector-sdk --test header` and commit it"
    );
    for f in [
        "ham_connect",
        "ham_attach_self",
        "ham_condition_raise",
        "ham_action_fail_log",
        "ham_heartbeat",
    ] {
        assert!(
            generated.contains(&format!("{f}(")),
            "{f} missing from ham.h"
        );
    }
}
