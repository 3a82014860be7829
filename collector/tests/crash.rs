//! The collector killed with SIGKILL while ingesting loses no acknowledged export, applies
//! every export entirely or not at all, keeps a database that passes SQLite's integrity check,
//! and after a restart still recognises retries of exports it acknowledged before the crash.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collector, export, point, post_export, unix_now};
use tenantscope_collector::sli::SliSource as _;
use tenantscope_collector::store::{Store, StoreOptions};

/// What happened to one export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// No answer (the collector died): applied or not, but never half.
    Unknown,
}

/// Export `i` of sender `s` is its own tenant with a known number of requests.
fn tenant(s: usize, i: usize) -> String {
    format!("s{s}n{i}")
}

fn requests(i: usize) -> u64 {
    (i % 7 + 1) as u64
}

#[test]
fn sigkill_while_ingesting_loses_no_acknowledged_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = Collector::start(dir.path(), "");
    let url = collector.otlp_url("/v1/metrics");
    let minute_end = unix_now() / 60 * 60;
    let outcomes: Arc<Mutex<BTreeMap<(usize, usize), Outcome>>> = Arc::default();
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (url, outcomes) = (url.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                let deadline = Instant::now() + Duration::from_secs(20);
                for i in 0.. {
                    let req = export(
                        "api",
                        vec![point(
                            &tenant(s, i),
                            "/posts",
                            200,
                            requests(i),
                            1,
                            minute_end,
                        )],
                    );
                    let outcome = match post_export(&client, &url, None, &req) {
                        Some(200) => Outcome::Acked,
                        Some(code) => panic!("export {s}/{i} answered {code}"),
                        None => Outcome::Unknown,
                    };
                    outcomes.lock().unwrap().insert((s, i), outcome);
                    // After the crash: one unanswered export per sender is enough.
                    if outcome == Outcome::Unknown || Instant::now() > deadline {
                        return;
                    }
                }
            })
        })
        .collect();
    // Let the load run, then kill the collector mid-stream.
    let started = Instant::now();
    while outcomes.lock().unwrap().len() < 400 && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(10));
    }
    collector.kill9();
    for s in senders {
        s.join().expect("sender");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let acked = outcomes.values().filter(|o| **o == Outcome::Acked).count();
    let unknown = outcomes.len() - acked;
    assert!(acked >= 100, "too little load before the kill: {acked}");

    // The database after the crash, read directly: intact, and every export all or nothing.
    {
        let store = Store::open(&collector.store, StoreOptions::default()).expect("reopen");
        store.integrity_check().expect("integrity after SIGKILL");
        let rows = store
            .rows_between(minute_end - 120, minute_end + 60)
            .expect("rows");
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rows {
            *stored.entry(r.tenant.clone()).or_default() += r.counts.requests;
        }
        let mut applied_unknown = 0;
        for ((s, i), outcome) in &outcomes {
            let want = requests(*i) + 1;
            let got = stored.get(&tenant(*s, *i)).copied().unwrap_or(0);
            match outcome {
                Outcome::Acked => assert_eq!(got, want, "acknowledged export {s}/{i} lost"),
                Outcome::Unknown => {
                    assert!(
                        got == 0 || got == want,
                        "export {s}/{i} half applied: {got}"
                    );
                    applied_unknown += usize::from(got == want);
                }
            }
        }
        assert_eq!(
            stored.len(),
            acked + applied_unknown,
            "only sent exports are stored"
        );
        println!(
            "sent {} exports: {acked} acknowledged and stored, {unknown} unanswered \
             ({applied_unknown} of them committed before the kill), 0 lost",
            outcomes.len()
        );
    }

    // Restarted on the same store: retries of acknowledged exports are recognised.
    collector.restart();
    let client = reqwest::blocking::Client::new();
    let retried: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| **o == Outcome::Acked)
        .take(20)
        .map(|(k, _)| *k)
        .collect();
    for (s, i) in &retried {
        let req = export(
            "api",
            vec![point(
                &tenant(*s, *i),
                "/posts",
                200,
                requests(*i),
                1,
                minute_end,
            )],
        );
        assert_eq!(post_export(&client, &url, None, &req), Some(200));
    }
    let store = Store::open(&collector.store, StoreOptions::default()).expect("reopen");
    for (s, i) in &retried {
        let rows = store
            .rows(&tenant(*s, *i), minute_end - 120, minute_end + 60)
            .expect("rows");
        let got: u64 = rows.iter().map(|r| r.counts.requests).sum();
        assert_eq!(got, requests(*i) + 1, "retry of {s}/{i} counted twice");
    }
    let metrics = collector.metrics_text();
    let duplicates = metrics
        .lines()
        .find(|l| {
            l.starts_with("tenantscope_collector_otlp_requests_total{")
                && l.contains("outcome=\"duplicate\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(duplicates, Some(retried.len() as f64), "{metrics}");
    collector.stop();
}
