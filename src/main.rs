use std::process::ExitCode;

use clap::Parser;
use databricks_slack_bot::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    cli::run(Cli::parse()).await
}
