//! `vault-dr explain`: the latest decision that made a candidate table (the current tick's, or
//! else the newest failover's) with that table, its time and what the failover lost, then the
//! current tick's sentence; `--failover ID` explains one past failover.

use super::{ApiArgs, CliError, Client, Output, opt, table};
use crate::model::{CandidateTable, Eligibility};
use crate::model::{DecisionRecord, FailoverRecord};

/// Flags of `vault-dr explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// Shared flags.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Explains this failover of the journal (an id from `vault-dr history`) instead of the
    /// latest decision.
    #[arg(long, value_name = "ID")]
    pub failover: Option<String>,
}

/// Fetches the latest decision and the newest failover (or the failover asked for) and renders
/// them. The JSON output is the API's: the decision alone (as before), or the failover record.
pub async fn run(args: &ExplainArgs) -> Result<String, CliError> {
    let client = Client::new(&args.api)?;
    if let Some(id) = &args.failover {
        let path = format!("v1/failovers/{}", encode_path_segment(id));
        let value = client.get_value(&path).await?;
        if args.api.output == Output::Json {
            return pretty(&value);
        }
        let r: FailoverRecord = serde_json::from_value(value)
            .map_err(|e| CliError::Decode(format!("failover {id}: {e}")))?;
        return Ok(render_failover(&r));
    }
    let value = client.get_value("v1/decisions/latest").await?;
    if args.api.output == Output::Json {
        return pretty(&value);
    }
    let d: DecisionRecord =
        serde_json::from_value(value).map_err(|e| CliError::Decode(e.to_string()))?;
    let failovers: Vec<FailoverRecord> =
        serde_json::from_value(client.get_value("v1/failovers?limit=1").await?)
            .map_err(|e| CliError::Decode(format!("the latest failover: {e}")))?;
    Ok(render(&d, failovers.first()))
}

fn pretty(value: &serde_json::Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Decode(e.to_string()))
}

/// A failover id as one URL path segment (ids are `<term>-<from>-<to>`, cluster names may
/// hold characters a path does not take as they are).
fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders what `explain` prints: the latest decision with a candidate table — `d` itself
/// when this tick made one (the primary is down now), else `latest`, the newest failover's
/// decision — with its time and table, then the current tick's sentence.
pub fn render(d: &DecisionRecord, latest: Option<&FailoverRecord>) -> String {
    let now = format!("now ({}): {}\n", d.at.to_rfc3339(), d.sentence);
    match (d.table(), latest) {
        (Some(t), latest) => {
            let mut out = format!(
                "latest decision with a candidate table: this tick, {}\n{}\n\n{}",
                d.at.to_rfc3339(),
                d.sentence,
                render_table(t)
            );
            if let Some(r) = latest {
                out.push_str(&format!("\nlatest failover: {}\n", failover_line(r)));
            }
            out
        }
        (None, Some(r)) => {
            format!(
                "latest decision with a candidate table: failover {}\n\n{}",
                r.id,
                render_failover(r)
            ) + &format!("\n{now}")
        }
        (None, None) => format!(
            "no decision has made a candidate table yet: the primary has never been down and no switchover was asked for\n\n{now}"
        ),
    }
}

/// One line saying which failover `r` is and how it ended.
fn failover_line(r: &FailoverRecord) -> String {
    format!(
        "{} ({} -> {}, term {}, {:?}{}, decided {})\n  loss: {}",
        r.id,
        r.from,
        r.to,
        r.term,
        r.status,
        if r.planned {
            ", planned switchover"
        } else {
            ""
        },
        r.decided_at.to_rfc3339(),
        loss_sentence(r)
    )
}

/// Renders one failover's decision: which it is, why it was decided, the candidate table it
/// chose from, what it lost (`history` has its steps).
pub fn render_failover(r: &FailoverRecord) -> String {
    let table = if r.table.candidates.is_empty() {
        "(no candidate table: the record was rebuilt from the topology by a coordinator that did not make the decision)\n".to_owned()
    } else {
        format!(
            "candidate table at {}:\n{}",
            r.table.at.to_rfc3339(),
            render_table(&r.table)
        )
    };
    format!("{}\nreason: {}\n\n{}", failover_line(r), r.reason, table)
}

/// The record's loss account in one sentence; a record from before loss accounting says so.
pub fn loss_sentence(r: &FailoverRecord) -> String {
    match &r.loss {
        Some(l) => l.to_string(),
        None => "not accounted: the record predates loss accounting".into(),
    }
}

/// Renders a candidate table: every candidate, every figure, every reason.
pub fn render_table(t: &CandidateTable) -> String {
    let rows: Vec<Vec<String>> = t
        .candidates
        .iter()
        .map(|c| {
            vec![
                opt(c.rank, |r| format!("#{r}")),
                c.cluster.clone(),
                opt(c.state, |s| s.to_string()),
                opt(c.log_index, |v| v.to_string()),
                opt(c.lag_entries, |v| v.to_string()),
                opt(c.lag_seconds, |v| format!("{v:.1}")),
                opt(c.latency_p99_ms, |v| format!("{v:.1}")),
                opt(c.cpu_usage_cores, |v| format!("{v:.2}")),
                opt(c.memory_headroom_ratio, |v| format!("{:.0}%", v * 100.0)),
                c.priority.to_string(),
                opt(c.report_age_seconds, |v| format!("{v:.1}")),
                match &c.eligibility {
                    Eligibility::Eligible => "eligible".into(),
                    Eligibility::Ineligible(why) => why.to_string(),
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "RANK",
            "CLUSTER",
            "STATE",
            "LOG INDEX",
            "LAG ENTRIES",
            "LAG S",
            "P99 MS",
            "CPU CORES",
            "MEM FREE",
            "PRIORITY",
            "REPORT AGE S",
            "ELIGIBILITY",
        ],
        &rows,
    );
    out.push_str(&format!(
        "\nwinner: {}\n",
        t.winner
            .as_deref()
            .unwrap_or("none (no eligible candidate)")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::history::tests::{lost, record};
    use crate::model::{Decision, Phase};
    use chrono::{TimeZone, Utc};

    fn healthy() -> DecisionRecord {
        DecisionRecord {
            at: Utc.with_ymd_and_hms(2025, 1, 1, 12, 5, 0).unwrap(),
            phase: Phase::Healthy,
            decision: Decision::NoAction {
                reason: "primary s1 healthy".into(),
            },
            sentence: "no action: primary s1 healthy".into(),
            term: 2,
            primary: "s1".into(),
        }
    }

    #[test]
    fn after_a_failover_explain_shows_its_table_and_time_then_the_current_sentence() {
        let mut r = record(Some(lost()));
        r.table.candidates.push(crate::model::Candidate {
            cluster: "s1".into(),
            rank: Some(1),
            eligibility: Eligibility::Eligible,
            state: None,
            lag_entries: Some(3),
            lag_seconds: Some(0.5),
            latency_p99_ms: None,
            cpu_usage_cores: None,
            memory_headroom_ratio: None,
            priority: 0,
            report_age_seconds: Some(0.4),
            promotion_restores: false,
            log_index: None,
        });
        let text = render(&healthy(), Some(&r));
        assert!(
            text.starts_with("latest decision with a candidate table: failover 2-p-s1\n"),
            "{text}"
        );
        assert!(
            text.contains("2-p-s1 (p -> s1, term 2, Done, decided 2025-01-01T12:00:00+00:00)\n  loss: 40 entries and 2.00 s at risk"),
            "{text}"
        );
        assert!(
            text.contains(&format!("candidate table at {}", r.table.at.to_rfc3339())),
            "{text}"
        );
        assert!(text.contains("winner: s1"), "{text}");
        assert!(
            text.ends_with("now (2025-01-01T12:05:00+00:00): no action: primary s1 healthy\n"),
            "{text}"
        );
    }

    #[test]
    fn before_any_failover_explain_says_no_decision_made_a_table() {
        let none = render(&healthy(), None);
        assert!(
            none.starts_with("no decision has made a candidate table yet"),
            "{none}"
        );
        assert!(!none.contains("latest failover"), "{none}");
        assert!(
            none.contains("now (2025-01-01T12:05:00+00:00): no action"),
            "{none}"
        );
    }

    #[test]
    fn a_record_rebuilt_from_the_topology_says_why_it_has_no_table() {
        let mut r = record(None);
        r.table.candidates.clear();
        let text = render_failover(&r);
        assert!(text.contains("rebuilt from the topology"), "{text}");
        assert!(text.contains("not accounted"), "{text}");
    }

    #[test]
    fn failover_ids_are_one_path_segment() {
        assert_eq!(encode_path_segment("3-dc1-dc2"), "3-dc1-dc2");
        assert_eq!(encode_path_segment("3-a/b-c d"), "3-a%2Fb-c%20d");
    }
}
