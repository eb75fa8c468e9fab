//! Compile-time tests of the macros: `ui/pass` must build and run, `ui/fail` must fail with the
//! errors in the `.stderr` snapshots next to them.
//!
//! Regenerate the snapshots after a deliberate message change with
//! `TRYBUILD=overwrite cargo test -p eventbus-macros --test ui`, then read every changed file.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
