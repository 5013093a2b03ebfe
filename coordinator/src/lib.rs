//! vault-dr coordinator: aggregates agent reports, detects the loss of the primary with three
//! observers, chooses the best secondary, and carries out a journaled failover. Also the
//! operator's CLI (`status`, `explain`, `history`, `switchover`). The drill, the benchmarks and
//! the process lab are the separate `vault-dr-lab` crate, which uses this one.

pub mod api;
pub mod cli;
pub mod config;
pub mod coordination;
pub mod error;
pub mod failover;
pub mod failpoint;
pub mod group;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod state;
pub mod store;
pub mod traffic;
pub mod vault;

use crate::api::Service;
use crate::config::{Config, CoordinationConfig, StoreConfig, TrafficConfig};
use crate::coordination::Coordination;
#[cfg(feature = "kubernetes")]
use crate::coordination::kubernetes::KubernetesCoordination;
use crate::coordination::local::LocalCoordination;
pub use crate::error::{Error, Result};
use crate::failover::actions::TrafficSwitch;
use crate::failover::actions::{Actions, NoTrafficSwitch};
#[cfg(feature = "kubernetes")]
use crate::failover::events::KubernetesEvents;
use crate::failover::executor::Executor;
use crate::failover::hooks::{Hooks, StepHook};
use crate::failover::openbao::{CanaryVerifier, DesiredStateReplication, SealFencer};
use crate::leader::Leader;
use crate::store::Store;
use crate::store::buffered::BufferedStore;
use crate::store::shared_journal::{JournalCopy, SharedJournal};
#[cfg(feature = "kubernetes")]
use crate::traffic::kubernetes::KubernetesServiceSwitch;
use std::future::Future;
use std::sync::Arc;

/// A configuration that needs a backend this binary was built without (the drill's lean build
/// leaves out Kubernetes and MongoDB).
#[cfg(not(all(feature = "kubernetes", feature = "mongodb")))]
fn not_built(field: &str, feature: &str) -> Error {
    Error::Config(config::ConfigError {
        field: field.into(),
        message: format!(
            "this vault-dr was built without the {feature} backend (cargo feature `{feature}`)"
        ),
    })
}

/// Opens the configured store behind the write buffer. An embedded store is each replica's
/// own: its journal is also kept in `journal_copy`, where every replica reads it.
async fn open_store(
    config: &Config,
    registry: &prometheus::Registry,
    journal_copy: Arc<dyn JournalCopy>,
) -> Result<Arc<dyn Store>> {
    let retention = config.policy.report_retention;
    let inner: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded { path } => {
            let own: Arc<dyn Store> =
                Arc::new(store::embedded::EmbeddedStore::open(path, retention)?);
            Arc::new(SharedJournal::new(own, journal_copy, registry)?)
        }
        #[cfg(feature = "mongodb")]
        StoreConfig::Mongo { uri, database } => {
            Arc::new(store::mongo::MongoStore::connect(uri.expose(), database, retention).await?)
        }
        #[cfg(not(feature = "mongodb"))]
        StoreConfig::Mongo { .. } => return Err(not_built("store.mongodb_uri", "mongodb")),
    };
    let buffered: Arc<dyn Store> = BufferedStore::new(inner, config.store_buffer, registry)
        .map_err(|e| Error::Store(store::StoreError::Unavailable(e.to_string())))?;
    // With MongoDB down at start-up the buffer retries init in the background.
    if let Err(e) = buffered.init().await {
        tracing::warn!("store not ready yet: {e}");
    }
    Ok(buffered)
}

/// Runs the coordinator on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = Arc::new(config);
    failpoint::arm(&config::ProcessEnv).map_err(|e| {
        Error::Config(config::ConfigError {
            field: failpoint::ENV_FAILPOINT.into(),
            message: e.to_string(),
        })
    })?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry)?;
    #[cfg_attr(not(feature = "kubernetes"), allow(unused_mut))]
    let mut hooks: Vec<Arc<dyn StepHook>> = vec![Arc::new(metrics.clone())];
    #[cfg(feature = "kubernetes")]
    let mut kube_client: Option<kube::Client> = None;
    // Every failed Kubernetes API request is counted, also those logged only once a minute.
    #[cfg(feature = "kubernetes")]
    let kube_errors =
        coordination::kubernetes::ApiErrors::new(metrics.kubernetes_api_errors.clone());
    #[cfg(feature = "kubernetes")]
    let mut leader_pod: Option<Arc<coordination::leader_pod::LeaderPod>> = None;
    let journal_copy: Arc<dyn JournalCopy>;
    let coordination: Arc<dyn Coordination> = match &config.coordination {
        CoordinationConfig::Local {
            path,
            lease_duration,
            ..
        } => {
            journal_copy = Arc::new(coordination::journal_copy::FileJournalCopy::beside(path));
            Arc::new(LocalCoordination::new(
                path,
                config.id.clone(),
                *lease_duration,
            ))
        }
        #[cfg(not(feature = "kubernetes"))]
        CoordinationConfig::Kubernetes { .. } => {
            return Err(not_built("coordination.backend", "kubernetes"));
        }
        #[cfg(feature = "kubernetes")]
        k @ CoordinationConfig::Kubernetes {
            namespace,
            configmap_name,
            pod_selector,
            ..
        } => {
            let c = KubernetesCoordination::from_config(k, config.id.clone())
                .await?
                .with_api_errors(kube_errors.clone());
            if let Some(selector) = pod_selector {
                leader_pod = Some(Arc::new(
                    coordination::leader_pod::LeaderPod::new(
                        c.client(),
                        namespace,
                        &config.id,
                        selector,
                    )
                    .with_api_errors(kube_errors.clone()),
                ));
            }
            hooks.push(Arc::new(KubernetesEvents::new(
                c.client(),
                namespace.clone(),
                configmap_name.clone(),
                config.id.clone(),
            )?));
            kube_client = Some(c.client());
            journal_copy = Arc::new(coordination::journal_copy::ConfigMapJournalCopy::new(
                c.client(),
                namespace,
                coordination::journal_copy::journal_configmap_name(configmap_name),
            ));
            Arc::new(c)
        }
    };
    let store = open_store(&config, &registry, journal_copy).await?;
    let mut forwarder: Option<Arc<traffic::LocalForwarder>> = None;
    #[cfg(feature = "kubernetes")]
    let mut service_switch: Option<Arc<KubernetesServiceSwitch>> = None;
    let traffic: Arc<dyn TrafficSwitch> = match &config.traffic {
        TrafficConfig::None => Arc::new(NoTrafficSwitch),
        #[cfg(not(feature = "kubernetes"))]
        TrafficConfig::Kubernetes { .. } => return Err(not_built("traffic.backend", "kubernetes")),
        #[cfg(feature = "kubernetes")]
        TrafficConfig::Kubernetes { namespace, service } => {
            let client = match kube_client {
                Some(c) => c,
                None => kube::Client::try_default().await.map_err(|e| {
                    Error::Coordination(coordination::CoordinationError::Unavailable(format!(
                        "no Kubernetes client for the Service switch: {e}"
                    )))
                })?,
            };
            let switch = Arc::new(
                KubernetesServiceSwitch::new(client, namespace.clone(), service.clone())
                    .with_api_errors(kube_errors.clone()),
            );
            service_switch = Some(switch.clone());
            switch
        }
        TrafficConfig::Local { listen } => {
            let f = traffic::LocalForwarder::new(
                *listen,
                config.clusters.iter().map(|c| c.name.clone()).collect(),
                traffic::ForwarderMetrics::new(&registry)?,
            );
            forwarder = Some(f.clone());
            f
        }
    };
    let state = Arc::new(state::State::default());
    let vault = vault::VaultClient::new(config.policy.probe_timeout, config.vault_token.clone())?;
    let action_client = vault::VaultClient::new(
        std::time::Duration::from_secs(5),
        config.vault_token.clone(),
    )?;
    let actions = Actions {
        fencer: Arc::new(SealFencer {
            vault: action_client.clone(),
        }),
        replication: Arc::new(DesiredStateReplication {
            state: state.clone(),
            report_ttl: config.policy.report_ttl,
            promote_timeout: config.policy.promote_timeout,
            repoint_timeout: config.policy.report_ttl * 2,
            handover: failover::handover::Handover {
                vault: action_client.clone(),
            },
        }),
        traffic,
        verifier: Arc::new(CanaryVerifier {
            vault: action_client,
        }),
    };
    let executor = Executor::new(
        config.id.clone(),
        coordination.clone(),
        store.clone(),
        actions,
        config.clusters.clone(),
    )
    .with_hook(Arc::new(Hooks(hooks)))
    .with_promotion(config.policy.promotion)
    .with_publish({
        let state = state.clone();
        failover::executor::Publish(Arc::new(move |t| state.set_topology(t.clone())))
    });
    let service = Service {
        config: config.clone(),
        state,
        store,
        coordination,
        metrics,
        registry,
        // The API begins planned switchovers with it (POST /v1/switchover).
        executor: Some(executor.clone()),
    };
    let leader = Leader::new(service.clone(), executor, vault);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(f) = forwarder {
        // Listens on every replica, following the topology; closed when `run` stops.
        let period = match &config.coordination {
            CoordinationConfig::Local { .. } => traffic::REFRESH_PERIOD,
            _ => traffic::REFRESH_PERIOD_KUBERNETES,
        };
        tokio::spawn(traffic::supervise(
            f,
            service.coordination.clone(),
            config.clusters.clone(),
            period,
            service.state.refusal().clone(),
            stop_rx.clone(),
        ));
    }
    #[cfg(feature = "kubernetes")]
    if let Some(switch) = service_switch {
        // The leader keeps the client Service on the topology's target, every probe interval.
        tokio::spawn(traffic::kubernetes::supervise(
            switch,
            service.coordination.clone(),
            config.clusters.clone(),
            config.policy.probe_interval,
            service.metrics.traffic_corrections.clone(),
            service.state.refusal().clone(),
            stop_rx.clone(),
        ));
    }
    // The leader's pod carries the label the coordinator Service selects.
    #[cfg(feature = "kubernetes")]
    let labelling = leader_pod.map(|pod| {
        tokio::spawn(coordination::leader_pod::supervise(
            pod,
            service.coordination.clone(),
            stop_rx.clone(),
        ))
    });
    let loops = tokio::spawn(leader.run(stop_rx));
    let addr = listener.local_addr()?;
    let app = api::router(service);
    match &config.tls {
        None => {
            tracing::info!(id = %config.id, %addr, "coordinator listening (plain HTTP)");
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    let _ = stop_tx.send(true);
                })
                .await?;
        }
        Some((cert, key)) => {
            let tls = tls_config(cert, key).await?;
            tracing::info!(id = %config.id, %addr, "coordinator listening (TLS)");
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
    }
    let _ = loops.await;
    // A stopping leader takes the label off its own pod (bounded: the apiserver may be gone).
    #[cfg(feature = "kubernetes")]
    if let Some(task) = labelling {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    Ok(())
}

/// Loads the listener's certificate chain and key (PEM) for rustls with the ring provider.
async fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig> {
    // axum-server is built without a provider of its own: install the workspace's one (ring).
    vault_dr_common::http::install_crypto_provider();
    axum_server::tls_rustls::RustlsConfig::from_pem_chain_file(cert, key)
        .await
        .map_err(|e| {
            Error::Config(config::ConfigError {
                field: "tls.cert_file".into(),
                message: format!(
                    "cannot load the certificate {} and key {}: {e}",
                    cert.display(),
                    key.display()
                ),
            })
        })
}
