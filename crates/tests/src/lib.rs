//! Helpers shared by the integration tests in `tests/`.

use std::path::PathBuf;

/// The `vmfleet` binary of this build, next to the test executables (`cargo build` puts it
/// there; the README's test command builds it before running the tests).
pub fn vmfleet_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/vmfleet
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("vmfleet"))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --bins`",
        bin.display()
    );
    bin
}
