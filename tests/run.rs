//! `sluice run` with real children: both streams, exit statuses, signals passed on, and a
//! server stopped and started again underneath it (exact counts of what was held and dropped).

mod common;

use std::path::Path;
use std::process::Command;

use common::{SLUICE, Server, Watched, eventually, output_ok, temp_dir};

/// `sluice run ARGS -- COMMAND`, its output collected as it comes.
fn sluice_run(args: &[&str], command: &[&str]) -> Watched {
    Watched::spawn(
        Command::new(SLUICE)
            .arg("run")
            .args(args)
            .arg("--")
            .args(command)
            .env_remove("SLUICE_CONFIG"),
    )
}

/// Every stored line of `source` (memory, then files), as `sluice logs --all --json` prints it.
fn stored(server: &Server, source: &str) -> Vec<serde_json::Value> {
    let out = output_ok(Command::new(SLUICE).args([
        "logs",
        source,
        "--from-start",
        "--json",
        "--http",
        &server.http,
    ]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn messages(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["channel"].as_str().unwrap(),
                l["message"].as_str().unwrap()
            )
        })
        .collect()
}

fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap();
}

#[tokio::test]
async fn both_streams_are_sent_and_the_exit_status_passes_through_and_is_recorded() {
    let server = Server::start("");
    let mut run = sluice_run(
        &[
            "--source",
            "job-1",
            "--step",
            "test",
            "--origin",
            "APP/PROC/WORKER",
            "--instance",
            "2",
            "--tag",
            "build=42",
            "--max-line-bytes",
            "16",
            "--ingest",
            &server.ingest,
        ],
        &[
            "sh",
            "-c",
            "echo out one; echo err one >&2; echo out two; echo 'a line longer than sixteen bytes'; printf 'no line break'; exit 3",
        ],
    );
    assert_eq!(run.exit_code().await, 3);
    // Passed through to our own terminal, too.
    assert!(
        run.stdout()
            .starts_with("out one\nout two\na line longer than sixteen bytes\nno line break"),
        "{}",
        run.stdout()
    );
    assert!(run.stderr().contains("err one\n"), "{}", run.stderr());

    let lines = stored(&server, "job-1");
    let mut sent = messages(&lines[..lines.len() - 1]);
    // The two pipes are read side by side: only each stream's own order is certain.
    sent.sort();
    assert_eq!(
        sent,
        [
            "ERR err one",
            "OUT a line longer th",
            "OUT an sixteen bytes",
            "OUT no line break",
            "OUT out one",
            "OUT out two",
        ],
        "lines over --max-line-bytes are split, none lost"
    );
    for l in &lines[..lines.len() - 1] {
        assert_eq!(l["step"], "test");
        assert_eq!(l["origin"], "APP/PROC/WORKER");
        assert_eq!(l["instance_id"], "2");
        assert_eq!(l["tags"]["build"], "42", "{l}");
    }
    let exit = lines.last().unwrap();
    assert_eq!(exit["message"], "exited with status 3");
    assert_eq!(exit["origin"], "LGR");
    assert_eq!(exit["step"], "_server");
    assert_eq!(exit["tags"]["exit_status"], "3");
    assert_eq!(exit["tags"]["step"], "test");
}

#[tokio::test]
async fn a_child_killed_by_a_signal_is_recorded_and_exits_as_a_shell_reports_it() {
    let server = Server::start("");
    let mut run = sluice_run(
        &["--source", "job-2", "--ingest", &server.ingest, "--quiet"],
        &["sh", "-c", "echo before; kill -KILL $$"],
    );
    assert_eq!(run.exit_code().await, 128 + 9);
    assert_eq!(run.stdout(), "", "--quiet prints nothing of the child's");
    let lines = stored(&server, "job-2");
    assert_eq!(
        messages(&lines),
        ["OUT before", "ERR killed by signal 9 (SIGKILL)"]
    );
    assert_eq!(lines[1]["tags"]["signal"], "9");
}

#[tokio::test]
async fn sigint_and_sigterm_are_passed_on_to_the_child() {
    let server = Server::start("");
    for (sig, name, code) in [("-INT", "INT", 7), ("-TERM", "TERM", 8)] {
        let script = format!(
            "trap 'echo got {name}; exit {code}' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let source = format!("job-{name}");
        let mut run = sluice_run(
            &["--source", &source, "--ingest", &server.ingest],
            &["sh", "-c", &script],
        );
        eventually("the child to start", 30, async || {
            run.stdout().contains("ready").then_some(())
        })
        .await;
        run.signal(sig);
        assert_eq!(run.exit_code().await, code, "{}", run.stderr());
        let lines = stored(&server, &source);
        assert_eq!(
            messages(&lines),
            [
                "OUT ready".to_owned(),
                format!("OUT got {name}"),
                format!("ERR exited with status {code}")
            ]
        );
    }
}

#[tokio::test]
async fn output_while_sluice_is_stopped_is_held_and_sent_when_it_returns() {
    // A Unix socket keeps its path across the restart (TCP ports are new each start).
    let mut server = Server::start("  ingest_unix: {logs}.sock\n");
    let socket = format!("unix:{}.sock", server.logs.display());
    let gates = temp_dir("run-gates");
    let script = format!(
        "for i in $(seq 1 100); do echo \"line $i\"; done
         while [ ! -e {g}/go ]; do sleep 0.02; done
         for i in $(seq 101 300); do echo \"line $i\"; done
         touch {g}/wrote
         while [ ! -e {g}/end ]; do sleep 0.02; done",
        g = gates.display()
    );
    let mut run = sluice_run(
        &["--source", "held", "--ingest", &socket, "--quiet"],
        &["sh", "-c", &script],
    );
    server.wait_published("held", 100).await;
    server.stop();
    touch(&gates.join("go"));
    eventually(
        "the child to write while sluice is stopped",
        30,
        async || gates.join("wrote").exists().then_some(()),
    )
    .await;
    eventually("sluice run to notice", 30, async || {
        run.stderr().contains("holding the output").then_some(())
    })
    .await;
    server.respawn();
    eventually("the held lines to arrive", 60, async || {
        run.stderr().contains("again").then_some(())
    })
    .await;
    touch(&gates.join("end"));
    assert_eq!(run.exit_code().await, 0, "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.contains("again: sending the 200 lines held"),
        "{stderr}"
    );
    assert!(!stderr.contains("dropped"), "{stderr}");

    let lines = stored(&server, "held");
    let want: Vec<String> = (1..=300)
        .map(|i| format!("OUT line {i}"))
        .chain(["ERR exited with status 0".to_owned()])
        .collect();
    assert_eq!(messages(&lines), want, "every line once, in order");
}

#[tokio::test]
async fn past_the_buffer_the_oldest_lines_are_dropped_and_announced_exactly() {
    let mut server = Server::start("  ingest_unix: {logs}.sock\n");
    let socket = format!("unix:{}.sock", server.logs.display());
    server.stop();
    let gates = temp_dir("run-gates");
    let spill = temp_dir("run-spill");
    // 3,000 lines of 1,000 bytes (3 MB) into a 2 MiB buffer, with sluice down throughout.
    let script = format!(
        "i=1; pad=$(printf '%0990d' 0)
         while [ $i -le 3000 ]; do printf 'line %04d %s\\n' $i $pad; i=$((i+1)); done
         touch {g}/wrote
         while [ ! -e {g}/end ]; do sleep 0.02; done",
        g = gates.display()
    );
    let mut run = sluice_run(
        &[
            "--source",
            "dropping",
            "--ingest",
            &socket,
            "--quiet",
            "--buffer-bytes",
            "2097152",
            "--buffer-dir",
            spill.to_str().unwrap(),
        ],
        &["sh", "-c", &script],
    );
    // The child is not slowed: it writes everything with nowhere to send it.
    eventually("the child to write everything", 60, async || {
        gates.join("wrote").exists().then_some(())
    })
    .await;
    // Past the first frames, what is held waits in files.
    let own = eventually("the buffer to spill to files", 30, async || {
        let dir = std::fs::read_dir(&spill).ok()?.next()?.ok()?.path();
        (std::fs::read_dir(&dir).ok()?.count() > 0).then_some(dir)
    })
    .await;
    server.respawn();
    touch(&gates.join("end"));
    assert_eq!(run.exit_code().await, 0, "{}", run.stderr());
    assert!(!own.exists(), "the spill directory is removed at the end");

    let lines = stored(&server, "dropping");
    let (notice, rest) = lines.split_first().unwrap();
    let missed: u64 = notice["tags"]["missed"].as_str().unwrap().parse().unwrap();
    let missed_bytes: u64 = notice["tags"]["missed_bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(notice["step"], "_server");
    assert!(missed > 0 && missed < 3000, "{notice}");
    // Each line is 1,000 bytes without its line break.
    assert_eq!(missed_bytes, missed * 1000);
    let kept = &rest[..rest.len() - 1];
    assert_eq!(kept.len() as u64 + missed, 3000, "nothing lost unannounced");
    for (i, line) in kept.iter().enumerate() {
        let n = missed + 1 + i as u64;
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("line {n:04} ")),
            "the newest lines are kept, in order: {i}"
        );
    }
    assert_eq!(
        rest.last().unwrap()["message"],
        "exited with status 0",
        "{notice}"
    );
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!(
            "sluice run: dropped {missed} of 3000 lines ({missed_bytes} bytes)"
        )),
        "{stderr}"
    );
}
