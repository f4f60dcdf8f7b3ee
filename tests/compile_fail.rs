//! Bad `sparsenet!` input must fail to compile with an error at the
//! offending token that says what was expected. Each file under `tests/ui`
//! holds one mistake (or, in `two_mistakes.rs`, two reported together);
//! the `.stderr` next to it is the exact diagnostic. Regenerate with
//! `TRYBUILD=overwrite cargo test --test compile_fail` and read the diff.

#[test]
fn compile_fail() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
