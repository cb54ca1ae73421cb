//! `sluice logs` as people used to cf, heroku and nomad type it: several sources and the
//! firehose, repeatable origin and instance filters, --since, colour, the usual spellings, and
//! a tail that rides out the server going away without a gap or a duplicate.

mod common;

use std::process::Command;

use common::proxy::Proxy;
use common::{SLUICE, Server, Watched, output_ok};
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;

/// Publishes `envs` over native ingest, acknowledged.
async fn send(server: &Server, envs: Vec<Envelope>) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    assert_eq!(conn.send_batch(&envs).await.unwrap(), envs.len() as u64);
}

fn line(source: &str, message: &str) -> Envelope {
    Envelope::new(source, message.to_owned())
}

fn logs(http: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(SLUICE);
    cmd.arg("logs")
        .args(args)
        .args(["--http", http])
        .env_remove("SLUICE_CONFIG")
        .env_remove("NO_COLOR");
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(output_ok(cmd).stdout).unwrap()
}

fn messages(json_lines: &[String]) -> Vec<String> {
    json_lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["message"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_tail_rides_out_a_lost_connection_and_a_restart_without_gap_or_duplicate() {
    let mut server = Server::start("");
    let mut proxy = Proxy::start(&server.http).await;
    send(
        &server,
        (1..=3).map(|i| line("web", &format!("{i}"))).collect(),
    )
    .await;
    let tail = Watched::spawn(&mut logs(&proxy.addr, &["web", "--json"]));
    tail.stderr_says("Connected, tailing logs for web").await;
    send(
        &server,
        (4..=6).map(|i| line("web", &format!("{i}"))).collect(),
    )
    .await;
    assert_eq!(messages(&tail.stdout_lines(3).await), ["4", "5", "6"]);

    // Cut off: lines published meanwhile must still be shown, once.
    proxy.close();
    tail.stderr_says("reconnecting").await;
    send(
        &server,
        (7..=9).map(|i| line("web", &format!("{i}"))).collect(),
    )
    .await;
    // And the server itself goes away and comes back (on a new port, behind the same proxy).
    server.stop();
    server.respawn();
    send(
        &server,
        (10..=12).map(|i| line("web", &format!("{i}"))).collect(),
    )
    .await;
    proxy.open(&server.http).await;
    tail.stderr_says("Reconnected, tailing logs for web").await;
    let seen = tail.stdout_lines(9).await;
    send(&server, vec![line("web", "13")]).await;
    let seen_after = tail.stdout_lines(10).await;
    assert_eq!(
        messages(&seen_after),
        ["4", "5", "6", "7", "8", "9", "10", "11", "12", "13"],
        "every line once, in order (before the last: {seen:?})"
    );
}

#[tokio::test]
async fn several_sources_the_firehose_and_repeatable_origin_and_instance_filters() {
    let server = Server::start("");
    let mut rtr = line("api", "GET / 200");
    rtr.origin = "RTR".into();
    rtr.instance_id = "1".into();
    let mut stg = line("api", "staging");
    stg.origin = "STG".into();
    let mut web1 = line("api", "web 1");
    web1.origin = "APP/PROC/WEB".into();
    web1.instance_id = "1".into();
    send(&server, vec![line("web", "hello"), rtr, stg, web1]).await;
    send(&server, vec![line("db", "not asked for")]).await;

    // Two sources: one timeline, each line prefixed with its source.
    let out = stdout(&mut logs(
        &server.http,
        &["web", "api", "--recent", "--color", "never"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("web: ") && lines[0].ends_with("OUT hello"));
    assert!(lines[1].starts_with("api: ") && lines[1].contains("[RTR/1]"));
    assert!(!out.contains("not asked for"));

    let only = |args: &[&str]| {
        let mut all = vec!["api", "--recent", "--json"];
        all.extend_from_slice(args);
        messages(
            &stdout(&mut logs(&server.http, &all))
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        only(&["--origin", "RTR", "--origin", "STG"]),
        ["GET / 200", "staging"]
    );
    assert_eq!(only(&["--instance", "1"]), ["GET / 200", "web 1"]);
    assert_eq!(only(&["--instance", "1", "--origin", "APP"]), ["web 1"]);
    // The same filters in the API.
    let recent = server
        .get_json("/api/v1/sources/api/recent?instance=1&origin=APP,RTR")
        .await;
    assert_eq!(recent.as_array().unwrap().len(), 2);

    // The firehose: every source, also one that appears after the tail opened.
    let fire = Watched::spawn(&mut logs(&server.http, &["--all", "--json"]));
    fire.stderr_says("Connected, tailing logs for every source")
        .await;
    send(&server, vec![line("brand-new", "first words")]).await;
    let got = fire.stdout_lines(1).await;
    assert_eq!(messages(&got), ["first words"]);
    assert!(got[0].contains("\"source_id\":\"brand-new\""));
}

#[tokio::test]
async fn since_a_duration_or_a_time() {
    let server = Server::start("");
    let now = sluice_router::envelope::now_ns();
    let hour = 3_600_000_000_000i64;
    let mut old = line("job", "three hours ago");
    old.timestamp = now - 3 * hour;
    let mut recent = line("job", "half an hour ago");
    recent.timestamp = now - hour / 2;
    send(&server, vec![old, recent, line("job", "now")]).await;
    let out = stdout(&mut logs(&server.http, &["job", "--since", "1h", "--json"]));
    assert_eq!(
        messages(&out.lines().map(str::to_owned).collect::<Vec<_>>()),
        ["half an hour ago", "now"]
    );
    let four_hours_ago = chrono::DateTime::from_timestamp_nanos(now - 4 * hour).to_rfc3339();
    let out = stdout(&mut logs(
        &server.http,
        &["job", "-since", &four_hours_ago, "--json"],
    ));
    assert_eq!(out.lines().count(), 3, "{out}");
    let bad = logs(&server.http, &["job", "--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("sluice: invalid --since \"yesterday\"")
    );
}

#[tokio::test]
async fn colour_and_the_spellings_people_type_by_habit() {
    let server = Server::start("");
    let mut err = line("app", "boom");
    err.channel = sluice_router::Channel::Err;
    send(&server, vec![line("app", "fine"), err, line("app", "last")]).await;

    let always = stdout(&mut logs(
        &server.http,
        &["app", "--recent", "--color", "always"],
    ));
    let lines: Vec<&str> = always.lines().collect();
    assert!(!lines[0].contains('\x1b'));
    assert!(lines[1].starts_with("\x1b[31m") && lines[1].ends_with("ERR boom\x1b[0m"));
    // Not a terminal: no colour unless asked.
    let auto = stdout(&mut logs(&server.http, &["app", "--recent"]));
    assert!(!auto.contains('\x1b'));

    for n in [
        &["-n", "1"][..],
        &["--num", "1"],
        &["--lines", "1"],
        &["-num", "1"],
    ] {
        let mut args = vec!["app", "--recent"];
        args.extend_from_slice(n);
        let out = stdout(&mut logs(&server.http, &args));
        assert!(
            out.trim_end().ends_with("OUT last") && out.lines().count() == 1,
            "{n:?}: {out}"
        );
    }
    for follow in ["-f", "--follow", "--tail", "-tail"] {
        let tail = Watched::spawn(&mut logs(&server.http, &["app", follow, "-n", "2"]));
        let got = tail.stdout_lines(2).await;
        assert!(got[1].ends_with("OUT last"), "{follow}: {got:?}");
        tail.stderr_says("Connected, tailing logs for app").await;
    }
}

#[tokio::test]
async fn the_firehose_resumes_every_source_after_a_cut_and_a_restart() {
    let mut server = Server::start("");
    let mut proxy = Proxy::start(&server.http).await;
    send(
        &server,
        vec![line("a", "a old"), line("quiet", "before the tail")],
    )
    .await;
    let fire = Watched::spawn(&mut logs(&proxy.addr, &["--all", "--json"]));
    fire.stderr_says("Connected, tailing logs for every source")
        .await;
    send(&server, vec![line("a", "a1"), line("b", "b1")]).await;
    assert_eq!(messages(&fire.stdout_lines(2).await), ["a1", "b1"]);

    // While it is cut off: old sources go on, the quiet one speaks, a new one appears, and the
    // server restarts.
    proxy.close();
    fire.stderr_says("reconnecting").await;
    send(&server, vec![line("a", "a2"), line("quiet", "q1")]).await;
    server.stop();
    server.respawn();
    send(
        &server,
        vec![line("b", "b2"), line("new", "n1"), line("a", "a3")],
    )
    .await;
    proxy.open(&server.http).await;
    fire.stderr_says("Reconnected, tailing logs for every source")
        .await;
    let got = fire.stdout_lines(7).await;
    send(&server, vec![line("b", "b3")]).await;
    let got_after = fire.stdout_lines(8).await;
    let mut shown = messages(&got_after);
    // Caught up source by source: each source's own order holds, not the order across them.
    let last = shown.pop().unwrap();
    assert_eq!(last, "b3", "live again after catching up ({got:?})");
    shown.sort();
    assert_eq!(
        shown,
        ["a1", "a2", "a3", "b1", "b2", "n1", "q1"],
        "every line once: none before the tail began"
    );
    let order = |prefix: char| -> Vec<String> {
        messages(&got_after)
            .into_iter()
            .filter(|m| m.starts_with(prefix))
            .collect()
    };
    assert_eq!(order('a'), ["a1", "a2", "a3"]);
    assert_eq!(order('b'), ["b1", "b2", "b3"]);
}
