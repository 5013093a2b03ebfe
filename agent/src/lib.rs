//! vault-dr agent: the sidecar beside each Vault/OpenBao node. It probes the node and its
//! host every interval, serves Prometheus metrics and a small HTTP API, sends a report to the
//! coordinator and keeps the desired state it gets back.
//!
//! [`run`] wires the parts: one [`prometheus::Registry`], the [`probe::Prober`] task, the
//! [`report::Sender`] task (only with a coordinator) and the [`api::router`].

pub mod api;
pub mod config;
pub mod error;
pub mod gate;
pub mod launch;
pub mod metrics;
pub mod probe;
pub mod replication;
pub mod report;
pub mod restart;
pub mod state;
pub mod system;
pub mod vault;

pub use config::Config;
pub use error::{Error, Result};

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

/// Timeout of one Vault request: the interval, but at least 2 s (a restore blocks requests
/// for seconds) and at most 10 s.
pub fn probe_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(2), Duration::from_secs(10))
}

/// Runs the agent on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let registry = metrics::registry(&config.cluster, &config.node)?;
    let metrics = metrics::Metrics::new(&registry)?;
    let shared = Arc::new(state::Shared::new(&config.cluster, &config.node));

    let http = vault::http_client(&config.vault, probe_timeout(config.interval))?;
    let vault = Arc::new(vault::VaultClient::new(
        http,
        config.vault.addr.clone(),
        config.vault.token.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    // The snapshot and raft backends' status lives in memory: the report sender reads it at
    // sending, and they set `applied_term` themselves.
    let mut snapshot_status: Option<Arc<dyn replication::Replicator>> = None;
    let replicator: Arc<dyn replication::Replicator> = match &config.replication {
        config::ReplicationConfig::None => Arc::new(
            replication::enterprise::EnterpriseStatus::new(vault.clone()),
        ),
        config::ReplicationConfig::Snapshot(s) => {
            let status = Arc::new(replication::snapshot::SnapshotStatus::default());
            let token = config.vault.token.clone().ok_or(Error::Config {
                flag: "--vault-token-file",
                env: config::ENV_VAULT_TOKEN_FILE,
                message: "is required with --replication snapshot (the DR token)".into(),
            })?;
            let shipper = replication::snapshot::Shipper::new(
                s.clone(),
                &config.node,
                vault.clone(),
                vault::http_client(&config.vault, replication::snapshot::TRANSFER_TIMEOUT)?,
                token,
                shared.clone(),
                metrics.clone(),
                status.clone(),
            )
            .map_err(Error::SnapshotStore)?
            .with_restarter(
                restart::Restarter::new(
                    config.vault_restart,
                    config.vault_pid_file.clone(),
                    config.vault_process_names.clone(),
                )
                .with_vault_addr(config.vault.addr.clone()),
            );
            tasks.spawn(shipper.run());
            snapshot_status = Some(status.clone());
            status
        }
        config::ReplicationConfig::Raft(r) => {
            let status = Arc::new(replication::raft::RaftStatus::default());
            let controller = replication::raft::Controller::new(
                r.clone(),
                vault.clone(),
                shared.clone(),
                metrics.clone(),
                status.clone(),
            )
            .map_err(|e| Error::Config {
                flag: "--raft-control-dir",
                env: config::ENV_RAFT_CONTROL_DIR,
                message: format!("cannot create {}: {e}", r.control_dir.display()),
            })?;
            tasks.spawn(controller.run());
            snapshot_status = Some(status.clone());
            status
        }
    };
    let system = system::SystemSampler::new(
        config.cgroup_root.clone(),
        system::Locator::new(
            config.vault_pid_file.clone(),
            Some(&config.vault.addr),
            config.vault_process_names.clone(),
        ),
    )
    .with_explicit_cgroup(config.cgroup_explicit);
    let prober = probe::Prober::new(vault, replicator, system, shared.clone(), metrics.clone());

    tasks.spawn(prober.run(config.interval));
    if let Some(g) = &config.gate {
        let tls = match &g.tls {
            None => None,
            Some(files) => Some((
                files.clone(),
                gate::load_tls(files)
                    .await
                    .map_err(|message| Error::Config {
                        flag: "--gate-tls-cert",
                        env: config::ENV_GATE_TLS_CERT,
                        message,
                    })?,
            )),
        };
        let listener = tokio::net::TcpListener::bind(g.listen)
            .await
            .map_err(|source| Error::GateListen {
                addr: g.listen,
                source,
            })?;
        let gate = gate::Gate::new(
            shared.clone(),
            config.vault.addr.clone(),
            vault::gate_client(&config.vault)?,
            metrics.clone(),
            g.override_open,
        );
        tracing::info!(
            listen = %listener.local_addr().map_err(Error::Serve)?,
            node = %config.vault.addr,
            override_open = g.override_open,
            tls = tls.is_some(),
            "write gate serving the node's client address (closed until this node is the primary)"
        );
        tasks.spawn(gate.clone().watch());
        tasks.spawn(async move {
            if let Err(e) = gate::serve(gate, listener, tls).await {
                tracing::error!(error = %e, "the write gate's server failed");
            }
        });
    } else if config.coordinator.is_some() {
        tracing::warn!(
            "no write gate (--gate-listen): this node takes client writes whatever its role; \
             a write to a secondary or a returning old primary is lost at the next restore"
        );
    }
    if let Some(c) = &config.coordinator {
        let mut sender = report::Sender::new(
            c,
            &config.coordinator_fallbacks,
            shared.clone(),
            metrics.clone(),
        )?;
        if let Some(status) = &snapshot_status {
            sender = sender.replication_applies_terms(status.clone());
        }
        tasks.spawn(sender.run(config.interval));
    }
    shared.set_running(true);
    tracing::info!(
        cluster = %config.cluster,
        node = %config.node,
        vault = %config.vault.addr,
        coordinator = config.coordinator.as_ref().map(|c| c.url.to_string()),
        coordinator_fallbacks = config.coordinator_fallbacks.len(),
        replication = ?config.replication,
        vault_restart = ?config.vault_restart,
        interval = ?config.interval,
        listen = ?listener.local_addr().ok(),
        "agent started"
    );

    let app = api::router(api::ApiState {
        shared: shared.clone(),
        registry,
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .into_future();
    // The loops never end on their own; if one does (a panic), /healthz turns 503 so that the
    // orchestrator restarts the agent, while /metrics stays up for diagnosis.
    let watch = async {
        if let Some(ended) = tasks.join_next().await {
            match ended {
                Err(e) if e.is_panic() => tracing::error!("a probe or report loop panicked"),
                _ => tracing::error!("a probe or report loop ended"),
            }
            shared.set_running(false);
        }
        std::future::pending::<()>().await;
    };
    let served = tokio::select! {
        r = server => r,
        () = watch => Ok(()),
    };
    shared.set_running(false);
    tasks.shutdown().await;
    tracing::info!("agent stopped");
    served.map_err(Error::Serve)
}
