//! The lifecycle's whole table (every state × wanted × input) against the one kept in the
//! repository, `tests/lifecycle.table`: a change of behaviour shows as a change of that file.
//! Regenerate it with `HAM_WRITE_TABLE=1 cargo test -p ham-core --test lifecycle`, and review
//! the diff.

#[test]
fn the_lifecycle_is_the_table_in_the_repository() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lifecycle.table");
    let table = ham_core::lifecycle::table();
    if std::env::var_os("HAM_WRITE_TABLE").is_some() {
        std::fs::write(path, &table).expect("tests/lifecycle.table written");
    }
    let kept = std::fs::read_to_string(path).unwrap_or_default();
    let rows = ham_core::lifecycle::STATES.len()
        * ham_core::lifecycle::WANTED.len()
        * ham_core::lifecycle::INPUTS.len();
    assert_eq!(
        table.lines().count(),
        rows,
        "one row per state × wanted × input"
    );
    if kept != table {
        let diff: Vec<String> = kept
            .lines()
            .zip(table.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "the lifecycle differs from tests/lifecycle.table (regenerate with \
             HAM_WRITE_TABLE=1 and review):\n{}",
            diff.join("\n")
        );
    }
}
