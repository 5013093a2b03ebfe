//! `vault-dr history`: every failover with its steps, who ran them and how long each took.

use super::{ApiArgs, CliError, Client, Output, table};
use crate::model::FailoverRecord;

/// Fetches `/v1/failovers` and renders it.
pub async fn run(args: &ApiArgs, limit: usize) -> Result<String, CliError> {
    let client = Client::new(args)?;
    let value = client
        .get_value(&format!("v1/failovers?limit={limit}"))
        .await?;
    if args.output == Output::Json {
        return serde_json::to_string_pretty(&value).map_err(|e| CliError::Decode(e.to_string()));
    }
    let records: Vec<FailoverRecord> =
        serde_json::from_value(value).map_err(|e| CliError::Decode(e.to_string()))?;
    Ok(render(&records))
}

/// Renders the journal.
pub fn render(records: &[FailoverRecord]) -> String {
    if records.is_empty() {
        return "no failovers\n".into();
    }
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "{} · {} -> {} · term {} · {:?} · {}{}\n  reason: {}\n",
            r.id,
            r.from,
            r.to,
            r.term,
            r.status,
            r.decided_at.to_rfc3339(),
            if r.planned {
                " · planned switchover"
            } else {
                ""
            },
            r.reason
        ));
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.step.to_string(),
                    format!(
                        "+{:.2} s",
                        (s.started_at - r.decided_at).num_milliseconds() as f64 / 1000.0
                    ),
                    s.finished_at
                        .map(|f| {
                            format!(
                                "{:.2} s",
                                (f - s.started_at).num_milliseconds() as f64 / 1000.0
                            )
                        })
                        .unwrap_or_else(|| "running".into()),
                    s.by.clone(),
                    match &s.error {
                        Some(e) => format!("{} (error: {e})", s.detail),
                        None => s.detail.clone(),
                    },
                ]
            })
            .collect();
        for line in table(&["STEP", "AT", "TOOK", "BY", "DETAIL"], &rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
