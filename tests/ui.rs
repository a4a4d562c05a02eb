//! Compile-fail cases of `#[realtime_handler]`: one misuse per file under
//! `tests/ui`, each with the `.stderr` it must produce. Bless with
//! `TRYBUILD=overwrite cargo test --test ui`, then read every diff.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
