//! `vault-dr explain`: the latest decision in one sentence and its full candidate table.

use super::{ApiArgs, CliError, Client, Output, opt, table};
use crate::model::DecisionRecord;
use crate::model::{CandidateTable, Eligibility};

/// Fetches `/v1/decisions/latest` and renders it.
pub async fn run(args: &ApiArgs) -> Result<String, CliError> {
    let client = Client::new(args)?;
    let value = client.get_value("v1/decisions/latest").await?;
    if args.output == Output::Json {
        return serde_json::to_string_pretty(&value).map_err(|e| CliError::Decode(e.to_string()));
    }
    let d: DecisionRecord =
        serde_json::from_value(value).map_err(|e| CliError::Decode(e.to_string()))?;
    let mut out = format!("{}\n{}\n\n", d.at.to_rfc3339(), d.sentence);
    match d.table() {
        Some(t) => out.push_str(&render_table(t)),
        None => out.push_str("(no candidate table: the primary is not down)\n"),
    }
    Ok(out)
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
