//! `vault-dr switchover --to NAME`: asks the leader for a planned switchover and, with `--wait`,
//! prints every step as it completes until the failover is done.

use super::{ApiArgs, CliError, Client, Output};
use crate::model::{FailoverRecord, FailoverStatus, Step};
use std::time::Duration;

/// Flags of `vault-dr switchover`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwitchoverArgs {
    /// Shared flags (coordinator URL(s), token file, output).
    #[command(flatten)]
    pub api: ApiArgs,
    /// The secondary to make primary.
    #[arg(long)]
    pub to: String,
    /// Wait until the switchover is done, printing each step.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up waiting after this long (the switchover itself goes on).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How often `--wait` reads the journal.
const POLL: Duration = Duration::from_millis(250);

/// Begins the switchover; with `--wait`, follows it to the end. Returns the closing text.
pub async fn run(args: &SwitchoverArgs) -> Result<String, CliError> {
    let client = Client::new(&args.api)?;
    let begun = client
        .post_value("v1/switchover", &serde_json::json!({ "to": args.to }))
        .await?;
    let id = begun["id"]
        .as_str()
        .ok_or_else(|| CliError::Decode(format!("no failover id in {begun}")))?
        .to_owned();
    let message = begun["message"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        return Ok(match args.api.output {
            Output::Json => {
                serde_json::to_string_pretty(&begun).map_err(|e| CliError::Decode(e.to_string()))?
            }
            Output::Table => {
                format!("{message}\nfollow it with: vault-dr history (failover {id})\n")
            }
        });
    }
    if args.api.output == Output::Table {
        println!("{message}");
    }
    let started = tokio::time::Instant::now();
    let mut printed: Vec<Step> = Vec::new();
    loop {
        match client
            .get::<FailoverRecord>(&format!("v1/failovers/{id}"))
            .await
        {
            Ok(record) => {
                if args.api.output == Output::Table {
                    for line in new_steps(&record, &mut printed) {
                        println!("{line}");
                    }
                }
                if record.status == FailoverStatus::Done {
                    return Ok(match args.api.output {
                        Output::Json => serde_json::to_string_pretty(&record)
                            .map_err(|e| CliError::Decode(e.to_string()))?,
                        Output::Table => summary(&record),
                    });
                }
            }
            // The journal is written through a buffer: right after the decision it may not be
            // readable yet.
            Err(CliError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        if started.elapsed() >= args.timeout {
            return Err(CliError::Timeout(format!(
                "switchover {id} not done within {}; it continues: see vault-dr history",
                humantime::format_duration(args.timeout)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Lines for the steps of `record` that finished since the last call (each step once).
pub fn new_steps(record: &FailoverRecord, printed: &mut Vec<Step>) -> Vec<String> {
    let mut lines = Vec::new();
    for s in &record.steps {
        if s.finished_at.is_none() || printed.contains(&s.step) {
            continue;
        }
        printed.push(s.step);
        let at = record
            .seconds_to(s.step)
            .map(|t| format!("{t:>7.2} s"))
            .unwrap_or_else(|| "      - s".into());
        let outcome = match &s.error {
            Some(e) => format!("gave up: {e}"),
            None => s.detail.clone(),
        };
        lines.push(format!("{:<10} {at}  {outcome}", s.step.as_str()));
    }
    lines
}

/// The closing sentence of a finished switchover.
pub fn summary(record: &FailoverRecord) -> String {
    let total = record
        .seconds_to(Step::Done)
        .map(|t| format!(" after {t:.2} s"))
        .unwrap_or_default();
    format!(
        "switchover done: {} is primary in term {}{total} ({} is now its secondary)\n",
        record.to, record.term, record.from
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CandidateTable;
    use crate::model::StepRecord;
    use chrono::{Duration as Chrono, Utc};

    fn record(finished: &[(Step, i64, Option<&str>)]) -> FailoverRecord {
        let t0 = Utc::now();
        FailoverRecord {
            id: "2-p-s1".into(),
            term: 2,
            from: "p".into(),
            to: "s1".into(),
            planned: true,
            reason: "planned".into(),
            decided_at: t0,
            table: CandidateTable {
                at: t0,
                candidates: Vec::new(),
                winner: None,
            },
            steps: finished
                .iter()
                .map(|(step, ms, err)| StepRecord {
                    step: *step,
                    started_at: t0,
                    finished_at: Some(t0 + Chrono::milliseconds(*ms)),
                    by: "c1".into(),
                    detail: format!("{step} detail"),
                    error: err.map(str::to_owned),
                    effect_at: None,
                    later: Vec::new(),
                })
                .collect(),
            status: FailoverStatus::InProgress,
            loss: None,
        }
    }

    #[test]
    fn each_finished_step_is_printed_once_with_its_time_since_the_decision() {
        let mut printed = Vec::new();
        let r = record(&[(Step::Decided, 0, None), (Step::Fenced, 120, None)]);
        let lines = new_steps(&r, &mut printed);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("fenced"), "{}", lines[1]);
        assert!(lines[1].contains("0.12 s  fenced detail"), "{}", lines[1]);
        let r = record(&[
            (Step::Decided, 0, None),
            (Step::Fenced, 120, None),
            (Step::Promoted, 6_500, Some("timeout")),
        ]);
        let lines = new_steps(&r, &mut printed);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("6.50 s  gave up: timeout"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn the_summary_names_the_new_primary_the_term_and_the_total_time() {
        let r = record(&[(Step::Decided, 0, None), (Step::Done, 7_250, None)]);
        assert_eq!(
            summary(&r),
            "switchover done: s1 is primary in term 2 after 7.25 s (p is now its secondary)\n"
        );
    }
}
