//! The load generator's own checks: bad settings and a dead target fail loudly, never as a run
//! that reports 0 env/s.

use std::process::{Command, Output, Stdio};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_load_generator_refuses_bad_settings_and_fails_on_a_dead_target() {
    let load = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice-load"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let zero = load(&["--connections", "0", "--syslog", "127.0.0.1:1"]);
    assert!(!zero.status.success());
    assert!(
        stderr(&zero).contains("--connections, --sources and --batch must be at least 1"),
        "{}",
        stderr(&zero)
    );
    let backwards = load(&["--warmup=-1", "--syslog", "127.0.0.1:1"]);
    assert!(!backwards.status.success());
    assert!(
        stderr(&backwards).contains("--warmup must be a number of seconds, 0 or more"),
        "{}",
        stderr(&backwards)
    );
    let mixed = load(&["--firehose", "--sources", "2", "--syslog", "127.0.0.1:1"]);
    assert!(!mixed.status.success());
    assert!(
        stderr(&mixed).contains("--firehose needs --sources 1"),
        "{}",
        stderr(&mixed)
    );
    let garbage = load(&["--rate", "lots"]);
    assert!(!garbage.status.success());
    assert!(stderr(&garbage).contains("--rate"), "{}", stderr(&garbage));
    // Nothing listens on port 1: the run says so and fails, rather than reporting 0 env/s.
    let dead = load(&[
        "--protocol",
        "syslog",
        "--syslog",
        "127.0.0.1:1",
        "--tails",
        "0",
        "--count",
        "10",
    ]);
    assert!(
        !dead.status.success(),
        "{}",
        String::from_utf8_lossy(&dead.stdout)
    );
    assert!(
        stderr(&dead).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        stderr(&dead)
    );
    // A tail needs a Sluice to read from.
    let no_http = load(&["--syslog", "127.0.0.1:1", "--protocol", "syslog"]);
    assert!(!no_http.status.success());
    assert!(stderr(&no_http).contains("tails need a Sluice (--http)"));
}
