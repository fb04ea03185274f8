//! A chart with answers whose result calls for one: uploaded as a PNG with alt text where
//! the answer goes; `CHARTS=off` turns it off.

use crate::common::app::{Options, TestApp, mention};
use databricks_slack_bot::agent::Table;

fn revenue_by_region() -> Table {
    let row = |region: &str, revenue: &str| vec![Some(region.to_owned()), Some(revenue.to_owned())];
    Table::of(
        vec!["region".into(), "revenue".into()],
        vec![
            row("EMEA", "1204500.00"),
            row("AMER", "1311250.50"),
            row("APAC", "-20.5"),
        ],
    )
}

async fn answered_with_a_table(extra_env: Vec<(&'static str, String)>) -> TestApp {
    let app = TestApp::spawn_with(Options {
        extra_env,
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.table.lock().unwrap() = Some(revenue_by_region());
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> revenue by region?")).await;
    app.wait_for_answer("answer: revenue by region?").await;
    app.settled_job_states().await;
    app
}

#[tokio::test]
async fn a_result_that_calls_for_a_chart_gets_one_in_the_answers_thread() {
    let app = answered_with_a_table(Vec::new()).await;
    let asked = app.slack_calls("files.getUploadURLExternal").await;
    assert_eq!(asked.len(), 1, "the chart, and no CSV for a table that fits: {asked:?}");
    assert_eq!(asked[0]["filename"], "chart.png");
    assert_eq!(asked[0]["alt_txt"], "Bar chart of revenue by region, 3 rows");
    let png = app.uploaded().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(asked[0]["length"].as_str().unwrap(), png.len().to_string());
    let complete = app.wait_for_calls("files.completeUploadExternal", 1).await;
    assert_eq!(complete[0]["channel_id"], "C0LAN2Q65");
    assert_eq!(complete[0]["thread_ts"], "1515449522.000016");
    app.stop().await;
}

#[tokio::test]
async fn charts_off_draws_none() {
    let app = answered_with_a_table(vec![("CHARTS", "off".into())]).await;
    assert!(app.slack_calls("files.getUploadURLExternal").await.is_empty());
    app.stop().await;
}
