//! Running one test in a child copy of its test binary.
//!
//! `figment::Jail` swaps the whole process's environment and working
//! directory while its closure runs. In one binary with tests that spawn
//! workers or load the configuration, that would leak into them; a test that
//! needs it calls [`in_own_process`], which reruns exactly that test in a
//! child process where the swap touches nothing else.

use std::process::Command;

/// Set in the child to the name of the one test it runs.
const MARKER: &str = "ZHIMA_IT_OWN_PROCESS";

/// In the child, runs `body`; in the test binary proper, reruns the calling
/// test (named by libtest's thread name) in a child and fails unless exactly
/// that test ran and passed there.
pub fn in_own_process(body: impl FnOnce()) {
    let thread = std::thread::current();
    let name = thread
        .name()
        .expect("libtest names each test's thread after the test");
    if std::env::var(MARKER).is_ok_and(|marker| marker == name) {
        body();
        return;
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--test-threads=1"])
        .env(MARKER, name)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in its own process: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
