//! `vault-dr pause` and `vault-dr resume`: a maintenance pause of automatic failover, asked of
//! the leader (`POST /v1/pause`, `POST /v1/resume`), with who and why.

use super::{ApiArgs, CliError, Client, Output};
use std::time::Duration;

/// Flags of `vault-dr pause`.
#[derive(Debug, Clone, clap::Args)]
pub struct PauseArgs {
    /// Shared flags (coordinator URL(s), token file, output).
    #[command(flatten)]
    pub api: ApiArgs,
    /// Why (required; shown by `status`, kept in the topology).
    #[arg(long)]
    pub reason: String,
    /// The pause ends by itself after this long ("2h", "30m"; at most 30 days). Without it,
    /// it holds until `vault-dr resume`.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Who pauses (default: $USER@<host name>).
    #[arg(long)]
    pub by: Option<String>,
}

/// Flags of `vault-dr resume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// Shared flags (coordinator URL(s), token file, output).
    #[command(flatten)]
    pub api: ApiArgs,
    /// Who resumes (default: $USER@<host name>).
    #[arg(long)]
    pub by: Option<String>,
}

/// `$USER@<host name>`, as far as they are known.
fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// Asks the leader to pause; the answer in one sentence (or its JSON).
pub async fn pause(args: &PauseArgs) -> Result<String, CliError> {
    let client = Client::new(&args.api)?;
    let mut body = serde_json::json!({
        "reason": args.reason,
        "by": args.by.clone().unwrap_or_else(who),
    });
    if let Some(d) = args.duration {
        body["for"] = humantime::format_duration(d).to_string().into();
    }
    let answer = client.post_value("v1/pause", &body).await?;
    render(&args.api, &answer, |a| {
        let p: crate::model::topology::Pause = serde_json::from_value(a["pause"].clone())
            .map_err(|e| CliError::Decode(format!("the pause: {e}")))?;
        Ok(format!(
            "{p}\nno automatic failover until it ends; detection, metrics and `vault-dr switchover` go on\n"
        ))
    })
}

/// Asks the leader to resume.
pub async fn resume(args: &ResumeArgs) -> Result<String, CliError> {
    let client = Client::new(&args.api)?;
    let body = serde_json::json!({ "by": args.by.clone().unwrap_or_else(who) });
    let answer = client.post_value("v1/resume", &body).await?;
    render(&args.api, &answer, |a| {
        let ended = serde_json::from_value::<crate::model::topology::Pause>(a["pause"].clone());
        Ok(match (a["resumed"].as_bool(), ended) {
            (Some(true), Ok(p)) => format!("automatic failover is on again ({p})\n"),
            (Some(true), Err(_)) => "automatic failover is on again\n".to_owned(),
            _ => "automatic failover was not paused\n".to_owned(),
        })
    })
}

fn render(
    api: &ApiArgs,
    answer: &serde_json::Value,
    table: impl FnOnce(&serde_json::Value) -> Result<String, CliError>,
) -> Result<String, CliError> {
    match api.output {
        Output::Json => {
            serde_json::to_string_pretty(answer).map_err(|e| CliError::Decode(e.to_string()))
        }
        Output::Table => table(answer),
    }
}
