//! `vault-dr explain`: the latest decision in one sentence and its full candidate table, and
//! the latest failover with what it lost.

use super::{ApiArgs, CliError, Client, Output, opt, table};
use crate::model::{CandidateTable, Eligibility};
use crate::model::{DecisionRecord, FailoverRecord};

/// Fetches `/v1/decisions/latest` and the latest failover, and renders them (the JSON output
/// is the decision alone, as before; `history --output json` has the failovers).
pub async fn run(args: &ApiArgs) -> Result<String, CliError> {
    let client = Client::new(args)?;
    let value = client.get_value("v1/decisions/latest").await?;
    if args.output == Output::Json {
        return serde_json::to_string_pretty(&value).map_err(|e| CliError::Decode(e.to_string()));
    }
    let d: DecisionRecord =
        serde_json::from_value(value).map_err(|e| CliError::Decode(e.to_string()))?;
    let failovers: Vec<FailoverRecord> =
        serde_json::from_value(client.get_value("v1/failovers?limit=1").await?)
            .map_err(|e| CliError::Decode(format!("the latest failover: {e}")))?;
    Ok(render(&d, failovers.first()))
}

/// Renders the decision, its candidate table, and `latest` (the newest failover) with its
/// loss account.
pub fn render(d: &DecisionRecord, latest: Option<&FailoverRecord>) -> String {
    let mut out = format!("{}\n{}\n\n", d.at.to_rfc3339(), d.sentence);
    match d.table() {
        Some(t) => out.push_str(&render_table(t)),
        None => out.push_str("(no candidate table: the primary is not down)\n"),
    }
    if let Some(r) = latest {
        out.push_str(&format!(
            "\nlatest failover {} ({} -> {}, term {}, {:?}, decided {})\n  loss: {}\n",
            r.id,
            r.from,
            r.to,
            r.term,
            r.status,
            r.decided_at.to_rfc3339(),
            loss_sentence(r)
        ));
    }
    out
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
    fn explain_shows_the_latest_failover_and_what_it_lost() {
        let text = render(&healthy(), Some(&record(Some(lost()))));
        assert!(text.contains("no action: primary s1 healthy"), "{text}");
        assert!(
            text.contains("latest failover 2-p-s1 (p -> s1, term 2, Done, decided 2025-01-01T12:00:00+00:00)\n  loss: 40 entries and 2.00 s at risk"),
            "{text}"
        );
        let none = render(&healthy(), None);
        assert!(!none.contains("latest failover"), "{none}");
    }
}
