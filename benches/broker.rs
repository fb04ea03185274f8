//! The token broker under load: 1,000 linked people asking 5 questions each at once, for
//! three access-token lifetimes in a row (the clock moved past expiry between them), on
//! SQLite and (with `TEST_DATABASE_URL`) Postgres, against the tests' fake Databricks
//! token endpoint with single-use refresh tokens.
//!
//! ```text
//! cargo bench --bench broker [-- PEOPLE QUESTIONS]     (defaults: 1000, 5)
//! ```
//!
//! Reported for each lifetime: refreshes per person (target: exactly one), and the time to
//! a token (p50, p99, max). In the first lifetime the first refresh Databricks receives is
//! held for 2 s: the other people's times show whether one person's refresh ever holds up
//! anyone else's question.

#[allow(dead_code)] // the bench uses a few of the tests' helpers
#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_databricks::{FakeDatabricks, FakeUser, Scripted};
use common::{KEY_A, Person, TestDb, broker_with, vault};
use databricks_slack_bot::clock::ManualClock;
use databricks_slack_bot::domain::WorkspaceHost;
use databricks_slack_bot::metrics::Metrics;

const NOW: i64 = 1_800_000_000;
/// How long the first lifetime's first refresh is held.
const SLOW_REFRESH: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let people: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let questions: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    println!("Token broker: {people} people × {questions} questions at once, three token lifetimes");
    println!();
    println!("| database | lifetime | refreshes per person | p50 | p99 | max | slowest of everyone else |");
    println!("|---|---|---|---|---|---|---|");
    for db in TestDb::all().await {
        run(&db, people, questions).await;
    }
}

async fn run(db: &TestDb, people: usize, questions: usize) {
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker_with(&db.url, &databricks, clock.clone(), Arc::new(Metrics::new())).await;
    let broker = Arc::new(broker);
    let keys = vault(&[KEY_A]);
    let workspace = WorkspaceHost::parse(&databricks.uri).unwrap();
    let mut persons = Vec::with_capacity(people);
    for i in 0..people {
        let person = Person {
            workspace: workspace.clone(),
            ..Person::new("T0BENCH", &format!("U{i:05}"))
        };
        let refresh_token = databricks.grant(&FakeUser::named(&format!("u{i}@example.com"), "Bench"));
        person.link(&store, &keys, &refresh_token, NOW).await;
        persons.push(person);
    }
    let access_ttl = databricks.state.lock().unwrap().access_ttl as i64;
    for lifetime in 1..=3 {
        if lifetime == 1 {
            databricks.script(Scripted::Delay(SLOW_REFRESH));
        }
        let before = databricks.refreshes().len();
        let calls: Vec<_> = persons
            .iter()
            .flat_map(|person| std::iter::repeat_n(person, questions))
            .map(|person| {
                let (broker, team, user) = (broker.clone(), person.team.clone(), person.user.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = broker.user_context(&team, &user, None).await;
                    (user, outcome.is_ok(), started.elapsed())
                })
            })
            .collect();
        let mut times = Vec::with_capacity(calls.len());
        let mut failed = 0;
        for call in calls {
            let (user, ok, took) = call.await.unwrap();
            failed += usize::from(!ok);
            times.push((took, user));
        }
        let refreshes = databricks.refreshes().len() - before;
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |p: f64| ms(times[((times.len() as f64 - 1.0) * p).round() as usize].0);
        let (slowest, slow_person) = times.last().cloned().unwrap();
        let others = times
            .iter()
            .rev()
            .find(|(_, user)| *user != slow_person)
            .map_or(0.0, |(took, _)| ms(*took));
        println!(
            "| {} | {lifetime} | {:.2} ({refreshes} for {}){} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            db.name,
            refreshes as f64 / people as f64,
            people,
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            },
            at(0.50),
            at(0.99),
            ms(slowest),
            others,
        );
        clock.advance(access_ttl + 1);
    }
    store.close().await;
}
