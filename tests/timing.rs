//! What waits on time, on tokio's paused clock against a server in the test's own process:
//! minutes of backoff and notice intervals pass in milliseconds, and their counts are exact.

mod common;

use std::time::Duration;

use common::in_process::TestServer;
use sluice::bindings::DrainRequest;
use sluice_router::{Delivery, Fields, Filter, Selector, Start};

/// A port nothing listens on: connecting is refused at once.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(start_paused = true)]
async fn a_dead_drain_backs_off_to_its_cap_and_says_so_once_per_interval() {
    let mut config = TestServer::config("timing");
    let url = format!("syslog://127.0.0.1:{}", dead_port());
    config.drains.delivery.reconnect_min_millis = 100;
    config.drains.delivery.reconnect_max_millis = 2_000;
    config.drains.delivery.failure_notice_interval_secs = 60;
    config.drains.bind = vec![DrainRequest {
        source_id: Some("svc".into()),
        url: url.clone(),
        tls: None,
    }];
    let server = TestServer::start(config).await;
    let mut notices = server
        .router
        .subscribe(
            Selector::Source("svc".into()),
            Filter::default(),
            Start::AfterSeq(0),
        )
        .unwrap();

    // Ten minutes on the paused clock.
    tokio::time::sleep(Duration::from_secs(600)).await;

    let mut got = Vec::new();
    let mut batch = Vec::new();
    while notices.poll_into(&mut batch, 1024) > 0 {
        for d in batch.drain(..) {
            if let Delivery::Log(env) = d {
                got.push(String::from_utf8_lossy(env.message()).into_owned());
            }
        }
    }
    let expected = format!("failed to connect to syslog drain {url}: connection refused");
    assert!(got.iter().all(|m| *m == expected), "{got:?}");
    // One at the first failure, then one a minute: 11 in 600 s (10 if the last minute has not
    // quite passed at the moment the clock stops).
    assert!((10..=11).contains(&got.len()), "{} notices", got.len());
    // Delays double from 100 ms to the 2 s cap, each drawn from [d/2, d]: at the cap an attempt
    // every 1-2 s, so between 300 and 600 attempts in ten minutes, and a few more on the way up.
    let drains = &server.running().drains;
    let errors = drains.list(Some("svc"))[0].errors;
    assert!((300..=615).contains(&errors), "{errors} attempts");
    // The stop waits on the persister's own thread, which runs on real time: so does the clock.
    tokio::time::resume();
    assert!(server.stop().await, "every task stops");
}
