//! `vault-dr history`: every failover with its steps, who ran them and how long each took,
//! and what it lost; then the maintenance pauses (who, why, when, how each ended).

use super::{ApiArgs, CliError, Client, Output, table};
use crate::model::FailoverRecord;
use crate::model::topology::Topology;

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
    let topology: crate::api::TopologyResponse = client.get("v1/topology").await?;
    let mut out = render(&records);
    if let Some(t) = &topology.topology {
        out.push_str(&render_pauses(t));
    }
    Ok(out)
}

/// The topology's pauses, the current one last; nothing when there never was one.
pub fn render_pauses(t: &Topology) -> String {
    let all: Vec<String> = t
        .past_pauses
        .iter()
        .chain(t.pause.iter())
        .map(|p| format!("  {p}\n"))
        .collect();
    if all.is_empty() {
        return String::new();
    }
    format!(
        "\npauses of automatic failover (the last {}):\n{}",
        all.len(),
        all.concat()
    )
}

/// Renders the journal.
pub fn render(records: &[FailoverRecord]) -> String {
    if records.is_empty() {
        return "no failovers\n".into();
    }
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "{} · {} -> {} · term {} · {:?} · {}{}\n  reason: {}\n  loss: {}\n",
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
            r.reason,
            super::explain::loss_sentence(r)
        ));
        let at = |t: chrono::DateTime<chrono::Utc>| {
            format!(
                "+{:.2} s",
                (t - r.decided_at).num_milliseconds() as f64 / 1000.0
            )
        };
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .flat_map(|s| {
                let later = s.later.iter().map(|l| {
                    vec![
                        String::new(),
                        at(l.at),
                        String::new(),
                        String::new(),
                        format!("later: {}", l.detail),
                    ]
                });
                // A step whose effect happened before it ran (traffic that followed the
                // topology) is shown at its effect's time, and says when it ran.
                let early = s.effect_at.filter(|e| *e < s.started_at);
                let ran = early
                    .map(|_| {
                        format!(
                            " (took effect at {}; the step ran at {})",
                            at(s.effect_at.unwrap_or(s.started_at)),
                            at(s.started_at)
                        )
                    })
                    .unwrap_or_default();
                std::iter::once(vec![
                    s.step.to_string(),
                    at(early.unwrap_or(s.started_at)),
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
                        Some(e) => format!("{}{ran} (error: {e})", s.detail),
                        None => format!("{}{ran}", s.detail),
                    },
                ])
                .chain(later)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{
        AppliedIndex, CandidateTable, FailoverStatus, LossAccount, ServedData, Step, StepRecord,
    };
    use chrono::{TimeZone, Utc};

    /// A finished failover p -> s1 in term 2 with `loss`.
    pub(crate) fn record(loss: Option<LossAccount>) -> FailoverRecord {
        let at = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
        FailoverRecord {
            id: "2-p-s1".into(),
            term: 2,
            from: "p".into(),
            to: "s1".into(),
            planned: false,
            reason: "primary p down".into(),
            decided_at: at,
            table: CandidateTable {
                at,
                candidates: Vec::new(),
                winner: Some("s1".into()),
            },
            steps: vec![StepRecord {
                step: Step::Promoted,
                started_at: at,
                finished_at: Some(at + chrono::Duration::milliseconds(1500)),
                by: "c0".into(),
                detail: "s1 is primary in term 2".into(),
                error: None,
                effect_at: None,
                later: Vec::new(),
            }],
            status: FailoverStatus::Done,
            loss,
        }
    }

    /// 40 entries and 2.00 s at risk.
    pub(crate) fn lost() -> LossAccount {
        let at = Utc.with_ymd_and_hms(2025, 1, 1, 11, 59, 59).unwrap();
        LossAccount::promoted(
            Some(AppliedIndex {
                node: "p-0".into(),
                index: 1040,
                seen_at: at,
                last_seen_at: at,
                interval_seconds: Some(0.5),
            }),
            Some(ServedData {
                node: "s1-0".into(),
                mode: vault_dr_common::ReplicationMode::Snapshot,
                index: Some(1000),
                taken_at: Some(at - chrono::Duration::seconds(2)),
            }),
        )
    }

    #[test]
    fn history_shows_each_failovers_loss_under_its_reason() {
        let text = render(&[record(Some(lost()))]);
        assert!(
            text.contains(
                "  reason: primary p down\n  loss: 40 entries and 2.00 s at risk: p-0 was at index 1040 by 11:59:59.000"
            ),
            "{text}"
        );
        assert!(text.contains("promoted"), "{text}");
        let old = render(&[record(None)]);
        assert!(
            old.contains("  loss: not accounted: the record predates loss accounting\n"),
            "{old}"
        );
    }

    #[test]
    fn a_seal_that_completed_after_the_fenced_step_is_shown_under_it() {
        let mut r = record(None);
        let at = r.decided_at;
        r.steps.insert(
            0,
            StepRecord {
                step: Step::Fenced,
                started_at: at,
                finished_at: Some(at + chrono::Duration::milliseconds(1000)),
                by: "c0".into(),
                detail: "fenced by the term and the traffic cut".into(),
                error: Some("p not sealed in 1.00 s".into()),
                effect_at: None,
                later: vec![crate::model::LaterEvent {
                    at: at + chrono::Duration::milliseconds(63_250),
                    detail: "sealed p in 0.02 s (1 node(s))".into(),
                }],
            },
        );
        let text = render(&[r]);
        let lines: Vec<&str> = text.lines().collect();
        let fenced = lines.iter().position(|l| l.contains("fenced")).unwrap();
        assert!(
            lines[fenced].contains("(error: p not sealed in 1.00 s)"),
            "{text}"
        );
        let later = lines[fenced + 1];
        assert!(
            later.contains("+63.25 s") && later.ends_with("later: sealed p in 0.02 s (1 node(s))"),
            "{text}"
        );
        assert!(lines[fenced + 2].contains("promoted"), "{text}");
    }

    #[test]
    fn a_step_whose_effect_came_first_is_shown_at_the_effects_time() {
        let mut r = record(None);
        let at = r.decided_at;
        r.steps.push(StepRecord {
            step: Step::Switched,
            started_at: at + chrono::Duration::milliseconds(2000),
            finished_at: Some(at + chrono::Duration::milliseconds(2010)),
            by: "c0".into(),
            detail: "forwarder already sends to s1".into(),
            error: None,
            effect_at: Some(at + chrono::Duration::milliseconds(1520)),
            later: Vec::new(),
        });
        let text = render(&[r]);
        let line = text.lines().find(|l| l.contains("switched")).unwrap();
        assert!(line.contains("+1.52 s"), "{text}");
        assert!(
            line.ends_with(
                "forwarder already sends to s1 (took effect at +1.52 s; the step ran at +2.00 s)"
            ),
            "{text}"
        );
        assert!(
            !line.contains("+2.00 s  "),
            "the AT column is the effect's: {text}"
        );
    }

    #[test]
    fn the_pauses_are_listed_with_who_why_and_how_each_ended() {
        use crate::model::topology::Pause;
        let at = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
        let mut t = Topology::initial("p");
        assert_eq!(render_pauses(&t), "", "no pause ever: no section");
        t.pause = Some(Pause {
            by: "alice".into(),
            reason: "raft upgrade".into(),
            since: at,
            until: None,
            ended: None,
        });
        t.end_pause(at + chrono::Duration::minutes(5), "resumed by bob");
        t.pause = Some(Pause {
            by: "carol".into(),
            reason: "network work".into(),
            since: at + chrono::Duration::hours(1),
            until: Some(at + chrono::Duration::hours(3)),
            ended: None,
        });
        let text = render_pauses(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "pauses of automatic failover (the last 2):");
        assert_eq!(
            lines[2],
            "  paused by alice since 2025-01-01T12:00:00Z until `vault-dr resume`: raft upgrade (ended 2025-01-01T12:05:00Z: resumed by bob)"
        );
        assert_eq!(
            lines[3],
            "  paused by carol since 2025-01-01T13:00:00Z until 2025-01-01T15:00:00Z: network work"
        );
    }

    #[test]
    fn the_json_history_carries_the_account() {
        let v = serde_json::to_value([record(Some(lost()))]).unwrap();
        assert_eq!(v[0]["loss"]["at_risk"]["kind"], "accounted");
        assert_eq!(v[0]["loss"]["at_risk"]["entries"], 40);
        assert_eq!(v[0]["loss"]["at_risk"]["seconds"], 2.0);
        assert_eq!(v[0]["loss"]["primary"]["index"], 1040);
        assert_eq!(v[0]["loss"]["served"]["index"], 1000);
    }
}
