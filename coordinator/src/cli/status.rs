//! `vault-dr status`: one line per cluster — role, state, lag, p99 latency, CPU, memory, report
//! age, and whether it could be promoted (or why not) — then the coordinator replicas given with
//! `--url a,b,c` and the role of each (leader, follower, unreachable). The data comes from the
//! leader.

use super::{ApiArgs, CliError, Client, Output, Replica, opt, table};
use crate::api::ClustersResponse;
use crate::model::Eligibility;
use crate::model::view::NodeView;
use vault_dr_common::{NodeState, Role};

/// Fetches `/v1/clusters` and `/v1/topology` from the leader, asks every replica its role, and
/// renders them. The JSON output adds `leader` (the lease holder's id) and `replicas`.
pub async fn run(args: &ApiArgs) -> Result<String, CliError> {
    let client = Client::new(args)?;
    let clusters: serde_json::Value = client.get_value("v1/clusters").await?;
    let topology: serde_json::Value = client.get_value("v1/topology").await?;
    let replicas = client.replicas().await;
    if args.output == Output::Json {
        let doc = serde_json::json!({
            "leader": topology["leader"],
            "replicas": replicas,
            "topology": topology,
            "clusters": clusters,
        });
        return serde_json::to_string_pretty(&doc).map_err(|e| CliError::Decode(e.to_string()));
    }
    let resp: ClustersResponse =
        serde_json::from_value(clusters).map_err(|e| CliError::Decode(e.to_string()))?;
    let topo: crate::api::TopologyResponse =
        serde_json::from_value(topology).map_err(|e| CliError::Decode(e.to_string()))?;
    let mut out = render(&resp, &topo);
    out.push('\n');
    out.push_str(&render_replicas(&replicas));
    Ok(out)
}

/// Renders the coordinator replicas and their roles.
pub fn render_replicas(replicas: &[Replica]) -> String {
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            vec![
                r.id.clone().unwrap_or_else(|| "-".into()),
                r.role.to_string(),
                r.url.to_string(),
            ]
        })
        .collect();
    table(&["COORDINATOR", "ROLE", "URL"], &rows)
}

fn freshest(nodes: &[NodeView]) -> Option<&NodeView> {
    nodes.iter().max_by_key(|n| n.received_at)
}

/// What a sealed node of a secondary cluster needs, from the kind its agent reports: OpenBao's
/// auto-unseal seals unseal a node only when its server starts, so a superseded primary's
/// sealed node rejoins once its server restarts (its agent does it with `--vault-restart
/// signal`).
pub fn sealed_line(cluster: &str, node: &str, kind: Option<&str>) -> String {
    let what = match kind {
        Some("sealed_restart_off") => format!(
            "stays sealed until its server restarts, and its agent runs with --vault-restart off: \
             restart it (kubectl delete pod {node}; systemctl restart openbao), or run the agent \
             with --vault-restart signal"
        ),
        Some("sealed_shamir") => format!(
            "has a Shamir seal, which a restart does not unseal: unseal it with the primary's \
             unseal keys (bao operator unseal, against {node})"
        ),
        Some("sealed_restart_failed") => format!(
            "its agent could not restart its server (see the agent's log): restart it by hand \
             (kubectl delete pod {node}; systemctl restart openbao)"
        ),
        // Not (yet) a superseded primary's node for its agent: sealed by an operator, in the
        // grace after a failover, or behind an older agent.
        _ => "is sealed; its agent restarts only a superseded primary's node (--vault-restart \
              signal): unseal or restart it by hand if it should serve"
            .to_owned(),
    };
    format!("sealed: {node} of {cluster} {what}")
}

/// Renders the status table.
pub fn render(resp: &ClustersResponse, topo: &crate::api::TopologyResponse) -> String {
    let now = resp.view.at;
    let mut rows = Vec::new();
    for c in resp.view.clusters.values() {
        let node = freshest(&c.nodes);
        let r = node.map(|n| &n.report);
        let state = match (r, &c.direct_probe) {
            (Some(r), _) => r.vault.state.to_string(),
            (None, Some(p)) => format!("{} (probe)", p.state),
            (None, None) => "-".into(),
        };
        let eligible = resp
            .candidates
            .candidates
            .iter()
            .find(|x| x.cluster == c.name)
            .map(|cand| match &cand.eligibility {
                Eligibility::Eligible => match cand.rank {
                    Some(rank) => format!("yes (#{rank})"),
                    None => "yes".into(),
                },
                Eligibility::Ineligible(why) => format!("no: {why}"),
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            c.name.clone(),
            c.role.to_string(),
            state,
            opt(r.and_then(|r| r.replication.lag_entries), |l| {
                format!("{l} entries")
            }) + &opt(r.and_then(|r| r.replication.lag_seconds), |s| {
                format!(" / {s:.1} s")
            })
            .replace('-', ""),
            // Both observers' figures over their newest probes: what the degraded-primary
            // rule judges (an older agent without them: its whole window's p99).
            match r {
                Some(r) if r.vault.recent.samples > 0 => probe_cell(&r.vault.recent),
                r => opt(r.map(|r| r.vault.latency.p99_ms), |v| format!("{v:.1} ms")),
            },
            probe_cell(&c.probe_recent),
            // `-` when the agent cannot attribute figures to its node (the process is gone,
            // or several servers share the host), never another process's or the host's.
            opt(r.and_then(|r| r.host.node_cpu_cores()), |v| {
                format!("{v:.2} cores")
            }),
            opt(r.and_then(|r| r.host.node_memory_bytes()), |v| {
                format!("{} MiB", v >> 20)
            }),
            opt(node.map(|n| n.age_seconds(now)), |v| format!("{v:.1} s")),
            eligible,
        ]);
    }
    let t = &resp.view.topology;
    let mut out = String::new();
    if let Some(p) = t.pause_at(now) {
        out.push_str(&format!(
            "PAUSED: no automatic failover (detection goes on): {p}\n"
        ));
    }
    if let Some(why) = &topo.refusing {
        out.push_str(&format!("REFUSING TO ACT: {why}\n"));
    }
    // The degraded-primary rule's evidence (`[policy.degraded]`): both observers' figures of
    // the primary and of the secondary it is compared with, and how long it has been over.
    if let Some(d) = &resp.decision
        && matches!(d.decision, crate::model::Decision::Degraded { .. })
    {
        out.push_str(&format!("DEGRADED PRIMARY: {}\n", d.sentence));
    }
    out += &format!(
        "primary {} · term {} · leader {}{}\n\n",
        t.serving_primary(),
        t.term,
        topo.leader.as_deref().unwrap_or("none"),
        t.failover
            .as_ref()
            .map(|f| format!(
                " · failover {} -> {} in progress (last step {})",
                f.from, f.to, f.completed
            ))
            .unwrap_or_default()
    );
    for f in &t.fence_pending {
        out.push_str(&format!(
            "fence pending: {} (old primary of term {}) is not sealed yet; the leader goes on sealing it since {} ({})\n",
            f.cluster,
            f.term,
            f.since.format("%H:%M:%S UTC"),
            f.failover
        ));
    }
    let sealed: Vec<String> = resp
        .view
        .clusters
        .values()
        .filter(|c| c.role != Role::Primary)
        .flat_map(|c| {
            c.nodes
                .iter()
                .filter(|n| n.report.vault.state == NodeState::Sealed)
                .map(|n| sealed_line(&c.name, &n.node, n.report.replication.last_error.as_deref()))
        })
        .collect();
    for line in &sealed {
        out.push_str(line);
        out.push('\n');
    }
    if !t.fence_pending.is_empty() || !sealed.is_empty() {
        out.push('\n');
    }
    out.push_str(&table(
        &[
            "CLUSTER",
            "ROLE",
            "STATE",
            "LAG",
            "P99",
            "PROBE P99",
            "CPU",
            "MEMORY",
            "REPORT AGE",
            "ELIGIBLE",
        ],
        &rows,
    ));
    out
}

/// The coordinator's own probes of a cluster: p99 of those answered, and the failed share.
fn probe_cell(s: &vault_dr_common::LatencySummary) -> String {
    match (s.samples, s.error_ratio) {
        (0, _) => "-".into(),
        (_, e) if e >= 1.0 => "all failed".into(),
        (_, e) if e > 0.0 => format!("{:.1} ms ({:.0}% failed)", s.p99_ms, e * 100.0),
        _ => format!("{:.1} ms", s.p99_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ReplicaRole;

    #[test]
    fn the_coordinators_own_probes_show_their_p99_and_failed_share() {
        use vault_dr_common::LatencySummary;
        let s = |samples, p99_ms, error_ratio| LatencySummary {
            samples,
            p50_ms: 1.0,
            p99_ms,
            error_ratio,
        };
        assert_eq!(probe_cell(&LatencySummary::default()), "-");
        assert_eq!(probe_cell(&s(120, 12.34, 0.0)), "12.3 ms");
        assert_eq!(probe_cell(&s(120, 812.0, 0.2)), "812.0 ms (20% failed)");
        assert_eq!(probe_cell(&s(5, 0.0, 1.0)), "all failed");
    }

    #[test]
    fn a_sealed_node_line_says_what_to_run_for_each_reason_its_agent_gives() {
        let off = sealed_line("dc1", "openbao-dc1-0", Some("sealed_restart_off"));
        assert!(
            off.starts_with("sealed: openbao-dc1-0 of dc1 stays sealed until its server restarts")
                && off.contains("kubectl delete pod openbao-dc1-0")
                && off.contains("--vault-restart signal"),
            "{off}"
        );
        let shamir = sealed_line("dc1", "n1", Some("sealed_shamir"));
        assert!(shamir.contains("bao operator unseal"), "{shamir}");
        let failed = sealed_line("dc1", "n1", Some("sealed_restart_failed"));
        assert!(failed.contains("the agent's log"), "{failed}");
        let other = sealed_line("dc1", "n1", None);
        assert!(other.contains("unseal or restart it by hand"), "{other}");
        for line in [off, shamir, failed, other] {
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_node_without_figures_shows_dashes_never_someone_elses_cpu_or_memory() {
        use crate::model::test_util::ViewBuilder;
        use vault_dr_common::HostStats;
        use vault_dr_common::report::HostSource;
        let view = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            // dc1's server was killed: its agent knows no process of its node.
            .reports("dc1", |r| {
                r.vault.state = NodeState::Unreachable;
                r.host = HostStats::UNKNOWN;
            })
            // dc3's agent is an older one that sent the host's figures.
            .reports("dc3", |r| {
                r.host.source = HostSource::Host;
                r.host.cpu_usage_cores = Some(1.29);
                r.host.memory_used_bytes = Some(1_181_116_006);
            })
            .build();
        let resp = ClustersResponse {
            candidates: crate::failover::scorer::score(&view, &Default::default()),
            view,
            report_ttl_seconds: 5.0,
            decision: None,
        };
        let topo = crate::api::TopologyResponse {
            id: "c-0".into(),
            is_leader: true,
            leader: Some("c-0".into()),
            topology: None,
            desired: Default::default(),
            refusing: None,
        };
        let text = render(&resp, &topo);
        let row = |name: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no row {name}:\n{text}"));
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let header = row("CLUSTER");
        let (cpu, mem) = (
            header.iter().position(|h| h == "CPU").unwrap(),
            header.iter().position(|h| h == "MEMORY").unwrap(),
        );
        for dead in ["dc1", "dc3"] {
            let r = row(dead);
            assert_eq!(
                (r[cpu].as_str(), r[mem].as_str()),
                ("-", "-"),
                "{dead}:\n{text}"
            );
        }
        let live = row("dc2");
        assert_eq!(
            (live[cpu].as_str(), live[mem].as_str()),
            ("0.10 cores", "512 MiB"),
            "{text}"
        );
    }

    #[test]
    fn replicas_are_listed_with_their_role_and_the_unreachable_without_id() {
        let r = |url: &str, id: Option<&str>, role| Replica {
            url: url::Url::parse(url).unwrap(),
            id: id.map(str::to_owned),
            role,
        };
        let text = render_replicas(&[
            r("http://127.0.0.1:1/", Some("a"), ReplicaRole::Follower),
            r("http://127.0.0.1:2/", Some("b"), ReplicaRole::Leader),
            r("http://127.0.0.1:3/", None, ReplicaRole::Unreachable),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["COORDINATOR", "ROLE", "URL"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["a", "follower", "http://127.0.0.1:1/"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["b", "leader", "http://127.0.0.1:2/"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["-", "unreachable", "http://127.0.0.1:3/"]
        );
    }
}
