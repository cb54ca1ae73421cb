//! The command line as a newcomer meets it: help, and one clear line for every mistake.

mod common;

use std::process::{Command, Output, Stdio};

use common::{SLUICE, temp_dir};

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_has_complete_help() {
    for (cmd, flags) in [
        ("serve", &["--config"][..]),
        (
            "emit",
            &[
                "--source",
                "--origin",
                "--instance",
                "--stderr",
                "--step",
                "--tag",
                "--max-line-bytes",
                "--ingest",
                "--config",
            ][..],
        ),
        (
            "logs",
            &[
                "--recent",
                "--follow",
                "--tail",
                "--lines",
                "--num",
                "--all",
                "--from-start",
                "--since",
                "--stdout",
                "--stderr",
                "--origin",
                "--instance",
                "--step",
                "--json",
                "--color",
                "--http",
                "--config",
                "--token",
                "--cacert",
            ][..],
        ),
        (
            "run",
            &[
                "--source",
                "--origin",
                "--instance",
                "--step",
                "--tag",
                "--max-line-bytes",
                "--buffer-bytes",
                "--buffer-dir",
                "--flush-timeout",
                "--quiet",
                "--ingest",
                "--token",
            ][..],
        ),
        ("token", &["--name", "--scopes", "--hash"][..]),
        ("drains", &["list", "add", "rm", "--http", "--token"][..]),
        ("drains add", &["--source", "URL"][..]),
        ("drains rm", &["--source", "DRAIN"][..]),
        ("drains list", &["--source", "--json"][..]),
        ("sources", &["--json", "--http", "--token", "--cacert"][..]),
    ] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let out = sluice(&args);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for flag in flags {
            assert!(
                help.contains(flag),
                "`sluice {cmd} --help` lacks {flag}:\n{help}"
            );
        }
    }
    let top = String::from_utf8(sluice(&["--help"]).stdout).unwrap();
    for cmd in ["serve", "emit", "logs", "run", "token", "sources", "drains"] {
        assert!(top.contains(cmd));
    }
}

#[test]
fn unreachable_servers_and_bad_addresses_are_one_line_errors() {
    let out = sluice(&["logs", "app", "--recent", "--http", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluice: cannot connect to sluice at 127.0.0.1:1: connection refused (is `sluice serve` running there?)\n"
    );
    let out = sluice(&["logs", "app", "--http", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("sluice: cannot connect to sluice at 127.0.0.1:1"));

    let out = sluice(&["emit", "--source", "app", "--ingest", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluice: cannot connect to sluice at 127.0.0.1:1: connection refused (is `sluice serve` running there?)\n"
    );
    let out = sluice(&["logs", "app", "--http", "nowhere"]);
    assert_eq!(
        stderr(&out),
        "sluice: invalid --http address \"nowhere\": expected HOST:PORT, such as 127.0.0.1:8080\n"
    );
    let out = sluice(&["logs", "app", "-n", "100001", "--http", "127.0.0.1:1"]);
    assert_eq!(
        stderr(&out),
        "sluice: -n 100001 is over 100000, the most lines Sluice reads back at once: use --from-start or --since for more\n"
    );
    let out = sluice(&["emit", "--source", "bad id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("sluice: invalid source_id \"bad id\""));
    let out = sluice(&["emit", "--source", "a", "--tag", "novalue"]);
    assert_eq!(
        stderr(&out),
        "sluice: invalid --tag \"novalue\": expected KEY=VALUE\n"
    );
}

#[test]
fn bad_config_files_name_the_key_and_the_place() {
    let dir = temp_dir("cli");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen:\n  http: 127.0.0.1:0\n  ingets: 127.0.0.1:0\n",
    )
    .unwrap();
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "sluice: invalid config file {}: listen: unknown field `ingets`",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("line 3 column 3"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = sluice(&["serve", "--config", "/nonexistent/sluice.yaml"]);
    assert_eq!(
        stderr(&out),
        "sluice: cannot read config file /nonexistent/sluice.yaml: no such file or directory\n"
    );
    // Clients read the same file: a port-0 server cannot be found through it.
    std::fs::write(&path, "listen:\n  http: 127.0.0.1:0\n").unwrap();
    let out = sluice(&["logs", "app", "--config", path.to_str().unwrap()]);
    assert!(stderr(&out).contains("pass --http"), "{}", stderr(&out));

    // A bad drain in the file stops the start, naming the entry.
    std::fs::write(
        &path,
        "drains:\n  bind:\n    - source_id: a\n      url: ftp://x:1\n",
    )
    .unwrap();
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(
        stderr(&out),
        format!(
            "sluice: invalid config file {}: drains.bind[0]: unsupported drain url scheme \"ftp\": use syslog://, syslog-tls://, syslog-udp://, https:// or https-batch://\n",
            path.display()
        )
    );

    // A drain's TLS files are read when the server binds it (loading the file reads none),
    // and a missing one stops the start, naming the entry and the file.
    std::fs::write(
        &path,
        format!("listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: null\n  syslog_udp: null\nlog_storage:\n  local_dir: {}\ndrains:\n  bind:\n    - source_id: a\n      url: syslog-tls://127.0.0.1:6514\n      tls:\n        ca_file: /nonexistent.pem\n", dir.join("logs").display()),
    )
    .unwrap();
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluice: drains.bind[0]: cannot read CA file /nonexistent.pem: no such file or directory\n"
    );
    // The failed start published nothing: the next start has nothing to skip.
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert!(
        !stderr(&out).contains("did not stop cleanly"),
        "{}",
        stderr(&out)
    );

    // A port already taken is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(
        &path,
        format!("listen:\n  http: {addr}\n  ingest: 127.0.0.1:0\n"),
    )
    .unwrap();
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(
        stderr(&out),
        format!("sluice: cannot listen on http {addr}: address in use\n")
    );
}

#[test]
fn without_tokens_only_loopback_is_served() {
    let dir = temp_dir("cli");
    let path = dir.join("open.yaml");
    std::fs::write(&path, "listen:\n  http: 0.0.0.0:0\n  ingest: 127.0.0.1:0\n").unwrap();
    let out = sluice(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluice: refusing to listen on http 0.0.0.0:0: no auth tokens are configured, so sluice binds loopback addresses only (127.0.0.0/8, ::1)\n"
    );
}

#[test]
fn run_mistakes_are_one_line_errors_and_an_absent_server_costs_the_command_nothing() {
    let out = sluice(&["run", "--source", "a", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127), "as a shell says: not found");
    assert_eq!(
        stderr(&out),
        "sluice: cannot run /nonexistent/cmd: no such file or directory\n"
    );
    let out = sluice(&["run", "--source", "bad id", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("sluice: invalid source_id \"bad id\""));
    let out = sluice(&["run", "--source", "a", "--buffer-bytes", "10", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("sluice: --buffer-bytes must be at least"),
        "{}",
        stderr(&out)
    );
    let out = sluice(&["run", "--source", "a"]);
    assert_eq!(out.status.code(), Some(2), "no command: a usage error");

    // Nothing listens: the command runs and exits as it would; what could not be delivered is
    // said once the flush timeout has passed.
    let out = sluice(&[
        "run",
        "--source",
        "a",
        "--ingest",
        "127.0.0.1:1",
        "--flush-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "echo one; echo two; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    let err = stderr(&out);
    assert!(
        err.contains("sluice run: cannot connect to sluice at 127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "sluice run: 2 lines not delivered: gave up after 1 s (--flush-timeout) without reaching sluice at 127.0.0.1:1\n"
        ),
        "{err}"
    );
}
