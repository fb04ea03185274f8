//! How long drawing a chart takes, and how much memory it holds: the largest result that
//! gets a chart (100 dated rows, three series) and a small bar chart, drawn repeatedly.
//!
//!     cargo bench --bench chart
//!
//! Prints the median and worst time per chart and the PNG sizes. The pixel buffer a
//! chart is drawn in is fixed: 960 × 540 × 3 bytes (about 1.5 MiB), freed once encoded.

use std::time::{Duration, Instant};

use databricks_slack_bot::agent::Table;
use databricks_slack_bot::slack::chart;

fn table(rows: usize, series: usize, dated: bool) -> Table {
    let mut columns = vec![if dated { "day".to_owned() } else { "region".to_owned() }];
    columns.extend((0..series).map(|s| format!("measure_{s}")));
    let rows = (0..rows)
        .map(|i| {
            let x = if dated {
                let day = jiff::civil::date(2025, 1, 1) + jiff::Span::new().days(i as i64);
                day.to_string()
            } else {
                format!("region {i}")
            };
            let mut row = vec![Some(x)];
            row.extend((0..series).map(|s| Some(format!("{:.2}", (i * (s + 3)) as f64 * 1.7 - 40.0))));
            row
        })
        .collect();
    Table::of(columns, rows)
}

fn measure(name: &str, table: &Table) {
    const RUNS: usize = 30;
    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut size = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let file = chart::chart(table).expect("a chart");
        times.push(started.elapsed());
        size = file.bytes().len();
    }
    times.sort();
    println!(
        "{name:<34} median {:>7.2} ms   worst {:>7.2} ms   png {:>6} KiB",
        times[RUNS / 2].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
        size / 1024
    );
}

fn main() {
    measure("line, 100 dated rows x 3 series", &table(100, 3, true));
    measure("bars, 100 categories x 3 series", &table(100, 3, false));
    measure("bars, 5 categories x 1 series", &table(5, 1, false));
}
