//! `deploy/prometheus/alerts.yaml` names only metrics the bot exposes: a rule over a
//! metric that does not exist never fires, and Prometheus says nothing about it.

use std::collections::HashSet;

use crate::common::app::TestApp;

/// PromQL's words in the rules: functions, operators, modifiers.
const PROMQL: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "rate",
    "increase",
    "delta",
    "clamp_min",
    "time",
    "offset",
    "and",
    "or",
    "unless",
    "by",
    "without",
];

/// Every metric name `/metrics` can show: sample names, and each declared family's
/// (`# TYPE`) with the suffixes its samples take, so a family with no samples yet counts.
fn exposed(metrics: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in metrics.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_owned());
        }
    }
    names
}

/// The text of every rule's `expr`, one string per rule.
fn expressions(rules: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(expr) = trimmed.strip_prefix("expr:") {
            found.extend(current.take());
            current = Some(expr.trim_start_matches([' ', '|']).to_owned());
        } else if let Some(expr) = current.as_mut() {
            if trimmed.ends_with(':') || trimmed.contains(": ") || trimmed.starts_with("- ") {
                found.extend(current.take());
            } else {
                if !expr.is_empty() {
                    expr.push(' ');
                }
                expr.push_str(trimmed);
            }
        }
    }
    found.extend(current);
    found
}

/// The metric names in a PromQL expression: its identifiers, less label matchers,
/// durations, strings, numbers and PromQL's own words.
fn metric_names(expr: &str) -> Vec<String> {
    let mut bare = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .filter(|word| !PROMQL.contains(word))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_alerting_rules_name_is_exposed() {
    let app = TestApp::spawn().await;
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let exposed = exposed(&metrics);
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yaml")).unwrap();
    let exprs = expressions(&rules);
    assert_eq!(
        exprs.len(),
        rules.matches("- alert:").count(),
        "one expression per alert: {exprs:?}"
    );
    let mut named = 0;
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a rule over no metric: {expr}");
        for name in names {
            assert!(
                exposed.contains(&name),
                "{name} (in `{expr}`) is not on /metrics:\n{metrics}"
            );
            named += 1;
        }
    }
    assert!(named >= 7, "{named} metric references");
    // The database's gauges are read at each scrape: present with no questions at all.
    for line in [
        "jobs{state=\"queued\"} 0",
        "links{status=\"needs_relink\"} 0",
        "oldest_due_job_age_seconds 0",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
    app.stop().await;
}

#[test]
fn the_rule_reader_finds_metrics_and_only_metrics() {
    assert_eq!(
        metric_names(
            r#"sum(rate(answers_total{outcome="failed"}[15m])) / clamp_min(sum(rate(answers_total[15m])), 0.001) > 0.2"#
        ),
        ["answers_total", "answers_total"]
    );
    assert_eq!(
        metric_names(r#"max(links{status="needs_relink"}) - max(links{status="needs_relink"} offset 1h) > 10"#),
        ["links", "links"]
    );
    let exprs = expressions(
        "    rules:\n      - alert: A\n        expr: |\n          sum(x_total)\n            / y\n        for: 5m\n      - alert: B\n        expr: z > 1\n        labels:\n",
    );
    assert_eq!(exprs, ["sum(x_total) / y", "z > 1"]);
}
