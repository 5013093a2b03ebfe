//! Where every replica reads the journal's recent records ([`JournalCopy`]), beside the
//! coordination backend's own state: a file next to the local coordination file, or a
//! ConfigMap next to the topology's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::model::FailoverRecord;
use crate::store::shared_journal::JournalCopy;
use crate::store::{Result, StoreError};

/// Key of the ConfigMap's `data` (and the content of the file): the records as a JSON array.
pub const JOURNAL_KEY: &str = "journal.json";

/// How many times a write that met a concurrent change is tried again.
#[cfg(feature = "kubernetes")]
const ATTEMPTS: usize = 5;

/// The journal copy of the local coordination backend: `<coordination file>.journal.json`,
/// replaced by an atomic rename (readers never see half a file).
#[derive(Debug)]
pub struct FileJournalCopy {
    path: PathBuf,
    writes: AtomicU64,
}

impl FileJournalCopy {
    /// The copy beside the coordination file `coordination_path`.
    pub fn beside(coordination_path: &Path) -> Self {
        let mut p = coordination_path.as_os_str().to_owned();
        p.push(".journal.json");
        Self {
            path: PathBuf::from(p),
            writes: AtomicU64::new(0),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("cannot {what} {}: {e}", self.path.display()))
    }
}

#[async_trait]
impl JournalCopy for FileJournalCopy {
    async fn read_journal(&self) -> Result<Vec<FailoverRecord>> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Corrupt(format!("journal copy {}: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.unavailable("read", e)),
        }
    }

    async fn update_journal(
        &self,
        change: &(dyn Fn(Vec<FailoverRecord>) -> Vec<FailoverRecord> + Send + Sync),
    ) -> Result<()> {
        // A corrupt copy is replaced rather than kept forever: the records are also in the
        // stores of the replicas that wrote them.
        let current = match self.read_journal().await {
            Ok(r) => r,
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!("{e}; replacing it");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let json = serde_json::to_vec(&change(current))
            .map_err(|e| StoreError::Corrupt(format!("journal copy: {e}")))?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.writes.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        tokio::fs::write(&tmp, &json)
            .await
            .map_err(|e| self.unavailable("write", e))?;
        if let Err(e) = tokio::fs::rename(&tmp, &self.path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.unavailable("replace", e));
        }
        Ok(())
    }

    fn location(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// The journal copy of the Kubernetes backend: ConfigMap `<topology ConfigMap>-journal`,
/// created by the first write, then replaced with a resourceVersion precondition.
#[cfg(feature = "kubernetes")]
#[derive(Clone)]
pub struct ConfigMapJournalCopy {
    configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    namespace: String,
    name: String,
}

#[cfg(feature = "kubernetes")]
impl std::fmt::Debug for ConfigMapJournalCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapJournalCopy")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The name of the journal ConfigMap beside topology ConfigMap `topology`.
pub fn journal_configmap_name(topology: &str) -> String {
    format!("{topology}-journal")
}

#[cfg(feature = "kubernetes")]
impl ConfigMapJournalCopy {
    /// How long one API request may take.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// The copy in ConfigMap `name` of `namespace`.
    pub fn new(client: kube::Client, namespace: &str, name: impl Into<String>) -> Self {
        Self {
            configmaps: kube::Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.into(),
        }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!(
            "cannot {what} ConfigMap {}/{}: {e}",
            self.namespace, self.name
        ))
    }

    async fn get(&self) -> Result<Option<k8s_openapi::api::core::v1::ConfigMap>> {
        tokio::time::timeout(Self::TIMEOUT, self.configmaps.get_opt(&self.name))
            .await
            .map_err(|_| self.failed("read", "no answer within 10 s"))?
            .map_err(|e| self.failed("read", e))
    }

    fn records(&self, cm: &k8s_openapi::api::core::v1::ConfigMap) -> Result<Vec<FailoverRecord>> {
        match cm.data.as_ref().and_then(|d| d.get(JOURNAL_KEY)) {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                StoreError::Corrupt(format!(
                    "journal copy in ConfigMap {}/{}: {e}",
                    self.namespace, self.name
                ))
            }),
        }
    }
}

#[cfg(feature = "kubernetes")]
#[async_trait]
impl JournalCopy for ConfigMapJournalCopy {
    async fn read_journal(&self) -> Result<Vec<FailoverRecord>> {
        match self.get().await? {
            Some(cm) => self.records(&cm),
            None => Ok(Vec::new()),
        }
    }

    async fn update_journal(
        &self,
        change: &(dyn Fn(Vec<FailoverRecord>) -> Vec<FailoverRecord> + Send + Sync),
    ) -> Result<()> {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{ObjectMeta, PostParams};
        for _ in 0..ATTEMPTS {
            let existing = self.get().await?;
            let current = match existing.as_ref().map(|cm| self.records(cm)) {
                Some(Ok(r)) => r,
                Some(Err(StoreError::Corrupt(e))) => {
                    tracing::warn!("{e}; replacing it");
                    Vec::new()
                }
                Some(Err(e)) => return Err(e),
                None => Vec::new(),
            };
            let json = serde_json::to_string(&change(current))
                .map_err(|e| StoreError::Corrupt(format!("journal copy: {e}")))?;
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    resource_version: existing
                        .as_ref()
                        .and_then(|c| c.metadata.resource_version.clone()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "vault-dr".to_owned(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
                data: Some([(JOURNAL_KEY.to_owned(), json)].into()),
                ..ConfigMap::default()
            };
            let pp = PostParams::default();
            let written = match existing {
                None => tokio::time::timeout(Self::TIMEOUT, self.configmaps.create(&pp, &cm)).await,
                Some(_) => {
                    tokio::time::timeout(
                        Self::TIMEOUT,
                        self.configmaps.replace(&self.name, &pp, &cm),
                    )
                    .await
                }
            }
            .map_err(|_| self.failed("write", "no answer within 10 s"))?;
            match written {
                Ok(_) => return Ok(()),
                // Another writer came first (created it, or changed it since the read).
                Err(e) if super::kubernetes::api_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.failed("write", e)),
            }
        }
        Err(self.failed(
            "write",
            format!("it changed under each of {ATTEMPTS} attempts"),
        ))
    }

    fn location(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::shared_journal::merge;

    #[tokio::test]
    async fn the_file_copy_is_beside_the_coordination_file_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let copy = FileJournalCopy::beside(&dir.path().join("coord.json"));
        assert_eq!(copy.path(), dir.path().join("coord.json.journal.json"));
        assert!(copy.read_journal().await.unwrap().is_empty(), "none yet");
        let r: FailoverRecord = serde_json::from_value(serde_json::json!({
            "id": "2-p-s1", "term": 2, "from": "p", "to": "s1", "planned": false,
            "reason": "primary p down", "decided_at": "2026-01-01T12:00:00Z",
            "table": {"at": "2026-01-01T12:00:00Z", "candidates": [], "winner": "s1"},
            "steps": [], "status": "done"
        }))
        .unwrap();
        let one = r.clone();
        copy.update_journal(&move |cur| {
            merge(cur.into_iter().chain([one.clone()]), 10, usize::MAX)
        })
        .await
        .unwrap();
        assert_eq!(copy.read_journal().await.unwrap(), vec![r.clone()]);
        // No temporary file is left behind; a corrupt copy is replaced, not fatal.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["coord.json.journal.json"]);
        std::fs::write(copy.path(), b"{not json").unwrap();
        assert!(matches!(
            copy.read_journal().await,
            Err(StoreError::Corrupt(_))
        ));
        let one = r.clone();
        copy.update_journal(&move |cur| {
            merge(cur.into_iter().chain([one.clone()]), 10, usize::MAX)
        })
        .await
        .unwrap();
        assert_eq!(copy.read_journal().await.unwrap(), vec![r]);
    }
}
