//! [`FakeApiServer`]: a fake Kubernetes apiserver over plain HTTP on 127.0.0.1, faithful to the
//! real one for what vault-dr uses (Lease, ConfigMap, Service, Event, Pod labels): create answers 201 or 409
//! AlreadyExists, get 404 NotFound, replace with a stale resourceVersion 409 Conflict, JSON merge
//! patch (conditional when it carries `metadata.resourceVersion`), delete, list, and one
//! resourceVersion counter that rises on every write. Errors are `Status` objects as the real
//! apiserver sends them, so kube's error handling sees what it would see in a cluster.
//!
//! Every request is recorded as a [`Call`] with its RBAC verb, so a test can check each one is
//! allowed by the chart's Role.
//!
//! [`test_client`] picks the cluster for a test: the fake, or a real cluster when
//! `VAULT_DR_TEST_KUBECONFIG` names a kubeconfig (then object names get a unique suffix and the
//! namespace comes from `VAULT_DR_TEST_NAMESPACE`, default `default`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Names a kubeconfig: the Kubernetes tests then run against that cluster instead of the fake.
pub const ENV_KUBECONFIG: &str = "VAULT_DR_TEST_KUBECONFIG";
/// Namespace used on a real cluster (default `default`).
pub const ENV_NAMESPACE: &str = "VAULT_DR_TEST_NAMESPACE";

/// An error of the fake apiserver or of choosing the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The listener could not be bound or served.
    #[error("fake apiserver: {0}")]
    Io(#[from] std::io::Error),
    /// The URL of the fake is not a valid URI (cannot happen for 127.0.0.1:port).
    #[error("fake apiserver url {0:?} is not a URI")]
    Url(String),
    /// The kubeconfig named by `VAULT_DR_TEST_KUBECONFIG` could not be used.
    #[error("kubeconfig {path} (from {ENV_KUBECONFIG}): {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The kube client could not be built.
    #[error("kube client: {0}")]
    Client(#[from] kube::Error),
}

/// One request the fake received, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group (`""` for core, `coordination.k8s.io` for Lease).
    pub group: String,
    /// Resource (plural, lower case): `leases`, `configmaps`, `services`, `events`.
    pub resource: String,
    /// Object name, for requests on one object.
    pub name: Option<String>,
    /// Namespace, for namespaced requests.
    pub namespace: Option<String>,
}

/// A resource type the fake serves.
#[derive(Debug, Clone, Copy)]
struct Kind {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
}

const KINDS: [Kind; 5] = [
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        kind: "Lease",
    },
    Kind {
        group: "",
        version: "v1",
        resource: "configmaps",
        kind: "ConfigMap",
    },
    Kind {
        group: "",
        version: "v1",
        resource: "services",
        kind: "Service",
    },
    Kind {
        group: "",
        version: "v1",
        resource: "events",
        kind: "Event",
    },
    Kind {
        group: "",
        version: "v1",
        resource: "pods",
        kind: "Pod",
    },
];

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, `configmaps`: how the apiserver names the resource in
    /// messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// (group, resource, namespace, name)
type Key = (String, String, String, String);

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    calls: Vec<Call>,
    /// (group, resource) answered 403 Forbidden, as for a revoked RBAC rule.
    forbidden: std::collections::BTreeSet<(String, String)>,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake apiserver; stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    url: String,
    store: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self, FakeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let store: Shared = Arc::new(Mutex::new(Store {
            // Like etcd, versions are large and opaque to clients; start away from zero.
            resource_version: 1000,
            ..Store::default()
        }));
        let app = Router::new().fallback(handle).with_state(store.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::warn!("fake apiserver stopped: {e}");
            }
        });
        Ok(Self {
            url,
            store,
            shutdown: Some(tx),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube config for the fake: its URL, namespace `default`, no credentials.
    pub fn config(&self) -> Result<kube::Config, FakeError> {
        let uri = self
            .url
            .parse()
            .map_err(|_| FakeError::Url(self.url.clone()))?;
        Ok(kube::Config::new(uri))
    }

    /// A kube client for the fake.
    pub fn client(&self) -> Result<kube::Client, FakeError> {
        Ok(kube::Client::try_from(self.config()?)?)
    }

    /// Every request received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.store).calls.clone()
    }

    /// From now on answers every request for `resource` of `group` (`""` for core) with 403
    /// Forbidden and the real apiserver's message, as after its RBAC rule was revoked.
    pub fn forbid(&self, group: &str, resource: &str) {
        lock(&self.store)
            .forbidden
            .insert((group.to_owned(), resource.to_owned()));
    }

    /// The stored object, as JSON (`group` is `""` for core resources).
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (
            group.to_owned(),
            resource.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        lock(&self.store).objects.get(&key).cloned()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The discovery documents a client reads before it addresses a kind by name (`helm
/// --dry-run=server` does for `lookup`): the server version, the API versions and groups, and
/// the resources of each group version, all from [`KINDS`].
fn discovery(path: &str) -> Option<Value> {
    let resources = |group: &str, version: &str| {
        let list: Vec<Value> = KINDS
            .iter()
            .filter(|k| k.group == group && k.version == version)
            .map(|k| {
                json!({
                    "name": k.resource, "singularName": "", "namespaced": true, "kind": k.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        (!list.is_empty()).then(|| {
            json!({ "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": group_version, "resources": list })
        })
    };
    match path.trim_end_matches('/') {
        "/version" => Some(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-vault-dr-fake",
            "platform": "linux/amd64",
        })),
        "/api" => Some(json!({ "kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [] })),
        "/apis" => {
            let mut groups: Vec<&str> = KINDS
                .iter()
                .map(|k| k.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let v = json!({ "groupVersion": format!("{g}/v1"), "version": "v1" });
                    json!({ "name": g, "versions": [v.clone()], "preferredVersion": v })
                })
                .collect();
            Some(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
        }
        "/api/v1" => resources("", "v1"),
        p => {
            let rest = p.strip_prefix("/apis/")?;
            let (group, version) = rest.split_once('/')?;
            (!version.contains('/')).then(|| resources(group, version))?
        }
    }
}

/// What a request addresses, parsed from its path.
#[derive(Debug)]
struct Target {
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    /// A subresource (`status`, `scale`): the fake serves none.
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        group,
        resource: resource.to_owned(),
        namespace,
        name,
        subresource,
    })
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The RBAC verb of a request.
fn verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn status(code: StatusCode, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    (code, axum::Json(body)).into_response()
}

fn details(kind: &Kind, name: &str) -> Value {
    json!({ "name": name, "group": kind.group, "kind": kind.resource })
}

fn not_found(kind: &Kind, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", kind.qualified()),
        Some(details(kind, name)),
    )
}

fn conflict(kind: &Kind, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.qualified()
        ),
        Some(details(kind, name)),
    )
}

/// The user the fake says it refused (the chart's service account).
const FORBIDDEN_USER: &str = "system:serviceaccount:default:vault-dr-coordinator";

/// 403 as the real apiserver words it for a request RBAC does not allow.
fn forbidden(kind: &Kind, verb: &str, name: Option<&str>, namespace: Option<&str>) -> Response {
    let object = match name {
        Some(n) => format!("{} \"{n}\"", kind.qualified()),
        None => kind.qualified(),
    };
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_owned(),
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{object} is forbidden: User \"{FORBIDDEN_USER}\" cannot {verb} resource \"{}\" in \
             API group \"{}\"{scope}",
            kind.resource, kind.group
        ),
        Some(details(kind, name.unwrap_or_default())),
    )
}

fn bad_request(message: impl Into<String>) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message.into(), None)
}

fn ok(code: StatusCode, object: &Value) -> Response {
    (code, axum::Json(object.clone())).into_response()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn set_meta(object: &mut Value, field: &str, value: Value) {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"][field] = value;
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn handle(
    State(store): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET
        && let Some(document) = discovery(uri.path())
    {
        return ok(StatusCode::OK, &document);
    }
    let Some(target) = parse_path(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    let params = query(&uri);
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let mut store = lock(&store);
    store.calls.push(Call {
        verb: verb(&method, target.name.is_some(), watch).to_owned(),
        group: target.group.clone(),
        resource: target.resource.clone(),
        name: target.name.clone(),
        namespace: target.namespace.clone(),
    });
    let Some(kind) = KINDS
        .iter()
        .find(|k| k.group == target.group && k.resource == target.resource)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    if store
        .forbidden
        .contains(&(kind.group.to_owned(), kind.resource.to_owned()))
    {
        let v = verb(&method, target.name.is_some(), watch);
        return forbidden(kind, v, target.name.as_deref(), target.namespace.as_deref());
    }
    if target.subresource.is_some() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    }
    let Some(namespace) = target.namespace.clone() else {
        // Cluster-wide requests: only list is meaningful for namespaced kinds.
        return match (method.as_str(), target.name.is_some(), watch) {
            ("GET", false, false) => list(&store, kind, None, &params),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "namespaced resources need a namespace for this request".into(),
                None,
            ),
        };
    };
    let name = target.name.clone();
    match (method.as_str(), name) {
        ("GET", _) if watch => {
            // A watch that ends at once: clients reconnect. Nothing here uses watches.
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "",
            )
                .into_response()
        }
        ("GET", None) => list(&store, kind, Some(&namespace), &params),
        ("GET", Some(name)) => {
            let key = key(kind, &namespace, &name);
            match store.objects.get(&key) {
                Some(o) => ok(StatusCode::OK, o),
                None => not_found(kind, &name),
            }
        }
        ("POST", None) => create(&mut store, kind, &namespace, &body),
        ("PUT", Some(name)) => update(&mut store, kind, &namespace, &name, &body),
        ("PATCH", Some(name)) => patch(&mut store, kind, &namespace, &name, &headers, &body),
        ("DELETE", Some(name)) => {
            let key = key(kind, &namespace, &name);
            match store.objects.remove(&key) {
                Some(o) => {
                    store.next_version();
                    let uid = meta_str(&o, "uid").unwrap_or_default().to_owned();
                    let body = json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": { "name": name, "group": kind.group, "kind": kind.resource, "uid": uid },
                    });
                    ok(StatusCode::OK, &body)
                }
                None => not_found(kind, &name),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            None,
        ),
    }
}

fn key(kind: &Kind, namespace: &str, name: &str) -> Key {
    (
        kind.group.to_owned(),
        kind.resource.to_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

fn list(
    store: &Store,
    kind: &Kind,
    namespace: Option<&str>,
    params: &BTreeMap<String, String>,
) -> Response {
    // Equality label selectors only ("a=b,c=d"), which is all the tests use.
    let mut wanted = Vec::new();
    if let Some(selector) = params.get("labelSelector").filter(|s| !s.is_empty()) {
        for term in selector.split(',') {
            match term.split_once('=') {
                Some((k, v)) if !k.contains('!') => {
                    wanted.push((k.to_owned(), v.trim_start_matches('=').to_owned()));
                }
                _ => return bad_request(format!("unsupported label selector {selector:?}")),
            }
        }
    }
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((g, r, ns, _), _)| {
            g == kind.group && r == kind.resource && namespace.is_none_or(|n| n == ns)
        })
        .map(|(_, o)| o)
        .filter(|o| {
            wanted.iter().all(|(k, v)| {
                o.get("metadata")
                    .and_then(|m| m.get("labels"))
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    == Some(v.as_str())
            })
        })
        .cloned()
        .collect();
    ok(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version(),
            "metadata": { "resourceVersion": store.resource_version.to_string() },
            "items": items,
        }),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(Box::new(bad_request("the body is not a JSON object"))),
        Err(e) => Err(Box::new(bad_request(format!(
            "cannot decode the body: {e}"
        )))),
    }
}

fn check_namespace(object: &Value, namespace: &str) -> Result<(), Box<Response>> {
    match meta_str(object, "namespace") {
        Some(ns) if !ns.is_empty() && ns != namespace => Err(Box::new(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ))),
        _ => Ok(()),
    }
}

static UIDS: AtomicU64 = AtomicU64::new(1);

fn create(store: &mut Store, kind: &Kind, namespace: &str, body: &Bytes) -> Response {
    let mut object = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if let Err(r) = check_namespace(&object, namespace) {
        return *r;
    }
    let name = match meta_str(&object, "name").filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => match meta_str(&object, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => format!("{prefix}{:05x}", UIDS.fetch_add(1, Ordering::Relaxed)),
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        kind.kind
                    ),
                    None,
                );
            }
        },
    };
    if meta_str(&object, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        // What the real apiserver (etcd3 store) answers.
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "resourceVersion should not be set on objects to be created".into(),
            None,
        );
    }
    let key = key(kind, namespace, &name);
    if store.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified()),
            Some(details(kind, &name)),
        );
    }
    let rv = store.next_version();
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    set_meta(&mut object, "name", json!(name));
    set_meta(&mut object, "namespace", json!(namespace));
    set_meta(
        &mut object,
        "uid",
        json!(format!(
            "00000000-0000-4000-8000-{:012x}",
            UIDS.fetch_add(1, Ordering::Relaxed)
        )),
    );
    set_meta(&mut object, "creationTimestamp", json!(now_rfc3339()));
    set_meta(&mut object, "resourceVersion", json!(rv));
    store.objects.insert(key, object.clone());
    ok(StatusCode::CREATED, &object)
}

/// Puts back what a write may not change (identity, creation) and stamps a new version.
fn finish_write(store: &mut Store, kind: &Kind, old: &Value, object: &mut Value) {
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        if let Some(v) = old.get("metadata").and_then(|m| m.get(field)) {
            set_meta(object, field, v.clone());
        }
    }
    let rv = store.next_version();
    set_meta(object, "resourceVersion", json!(rv));
}

fn update(store: &mut Store, kind: &Kind, namespace: &str, name: &str, body: &Bytes) -> Response {
    let mut object = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if let Err(r) = check_namespace(&object, namespace) {
        return *r;
    }
    if let Some(body_name) = meta_str(&object, "name").filter(|n| *n != name) {
        return bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        ));
    }
    let key = key(kind, namespace, name);
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    // No resourceVersion: an unconditional update, as these kinds allow.
    if let Some(rv) = meta_str(&object, "resourceVersion").filter(|rv| !rv.is_empty())
        && Some(rv) != meta_str(&old, "resourceVersion")
    {
        return conflict(kind, name);
    }
    finish_write(store, kind, &old, &mut object);
    store.objects.insert(key, object.clone());
    ok(StatusCode::OK, &object)
}

fn patch(
    store: &mut Store,
    kind: &Kind,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    // Strategic merge equals merge for the plain maps these kinds use (no lists patched here).
    if media != "application/merge-patch+json" && media != "application/strategic-merge-patch+json"
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake apiserver does not support patch type {content_type:?}"),
            None,
        );
    }
    let patch = match parse_body(body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let key = key(kind, namespace, name);
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    // A resourceVersion in the patch is a precondition, as in the real apiserver.
    if let Some(rv) = meta_str(&patch, "resourceVersion")
        && Some(rv) != meta_str(&old, "resourceVersion")
    {
        return conflict(kind, name);
    }
    let mut object = old.clone();
    merge_patch(&mut object, &patch);
    finish_write(store, kind, &old, &mut object);
    store.objects.insert(key, object.clone());
    ok(StatusCode::OK, &object)
}

/// The cluster a Kubernetes test runs against: the fake, or a real one from
/// `VAULT_DR_TEST_KUBECONFIG`.
pub struct TestKube {
    /// A client for it.
    pub client: kube::Client,
    /// Namespace to work in.
    pub namespace: String,
    config: kube::Config,
    suffix: String,
    fake: Option<FakeApiServer>,
}

impl std::fmt::Debug for TestKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKube")
            .field("cluster_url", &self.config.cluster_url)
            .field("namespace", &self.namespace)
            .field("suffix", &self.suffix)
            .field("fake", &self.fake)
            .finish_non_exhaustive()
    }
}

impl TestKube {
    /// `base` made unique for this run (unchanged on the fake, which is fresh per test).
    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// The fake, when the test runs on it.
    pub fn fake(&self) -> Option<&FakeApiServer> {
        self.fake.as_ref()
    }

    /// The kube config of the cluster, to build clients with extra layers.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A kubeconfig file for processes (coordinators, helm) to reach this cluster: written
    /// into `dir` for the fake, the file of `VAULT_DR_TEST_KUBECONFIG` for a real cluster.
    pub fn kubeconfig_file(&self, dir: &std::path::Path) -> Result<std::path::PathBuf, FakeError> {
        match &self.fake {
            Some(fake) => {
                let path = dir.join("kubeconfig");
                crate::coordinators::write_kubeconfig(&path, fake.url(), &self.namespace).map_err(
                    |e| FakeError::Kubeconfig {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    },
                )?;
                Ok(path)
            }
            None => {
                std::env::var(ENV_KUBECONFIG)
                    .map(Into::into)
                    .map_err(|e| FakeError::Kubeconfig {
                        path: ENV_KUBECONFIG.to_owned(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Leaves `topology` in ConfigMap `configmap` as a replica of an earlier install would
    /// (acquire Lease `lease`, write, release it), e.g. what `helm uninstall` keeps.
    pub async fn leave_topology(
        &self,
        lease: &str,
        configmap: &str,
        topology: &vault_dr_coordinator::model::topology::Topology,
    ) -> Result<(), vault_dr_coordinator::coordination::CoordinationError> {
        use vault_dr_coordinator::coordination::Coordination;
        let previous = vault_dr_coordinator::coordination::kubernetes::KubernetesCoordination::new(
            self.client.clone(),
            self.namespace.clone(),
            lease,
            configmap,
            "previous-install",
            std::time::Duration::from_secs(15),
            std::time::Duration::from_secs(1),
        );
        if !previous.try_acquire_or_renew().await? {
            return Err(
                vault_dr_coordinator::coordination::CoordinationError::Unavailable(format!(
                    "lease {lease} is held by another replica"
                )),
            );
        }
        previous.write_topology(topology, None).await?;
        previous.release().await
    }
}

/// What a [`TestIdentity`] may do: every verb on each of these (API group, resource), the
/// resources the coordinator uses.
pub const GRANTED: [(&str, &str); 5] = [
    ("coordination.k8s.io", "leases"),
    ("", "configmaps"),
    ("", "services"),
    ("", "events"),
    ("", "pods"),
];

/// Credentials of their own for the processes of a test, whose RBAC a test revokes one
/// resource at a time ([`TestKube::revoke`]): on the fake, its kubeconfig (the fake then
/// forbids the resource); on a real cluster, a ServiceAccount bound to a Role granting
/// [`GRANTED`], and a kubeconfig with a token of it (revoking rewrites the Role).
#[derive(Debug)]
pub struct TestIdentity {
    /// The kubeconfig file the processes read (`KUBECONFIG`).
    pub kubeconfig: std::path::PathBuf,
    /// On a real cluster: the name of the ServiceAccount, its Role and RoleBinding.
    name: Option<String>,
    /// What the Role still grants.
    granted: Mutex<Vec<(String, String)>>,
}

/// The Role named `name` granting every verb on `granted`.
fn role(name: &str, granted: &[(String, String)]) -> k8s_openapi::api::rbac::v1::Role {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
    Role {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..kube::api::ObjectMeta::default()
        },
        rules: Some(
            granted
                .iter()
                .map(|(group, resource)| PolicyRule {
                    api_groups: Some(vec![group.clone()]),
                    resources: Some(vec![resource.clone()]),
                    verbs: vec!["*".to_owned()],
                    ..PolicyRule::default()
                })
                .collect(),
        ),
    }
}

impl TestKube {
    /// A [`TestIdentity`] named after `base` (made unique), its kubeconfig written into `dir`.
    pub async fn identity(
        &self,
        dir: &std::path::Path,
        base: &str,
    ) -> Result<TestIdentity, FakeError> {
        let granted: Vec<(String, String)> = GRANTED
            .iter()
            .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
            .collect();
        if self.fake.is_some() {
            return Ok(TestIdentity {
                kubeconfig: self.kubeconfig_file(dir)?,
                name: None,
                granted: Mutex::new(granted),
            });
        }
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
        use kube::Api;
        use kube::api::{ObjectMeta, PostParams};
        let name = self.name(base);
        let meta = ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        };
        let pp = PostParams::default();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let account = ServiceAccount {
            metadata: meta.clone(),
            ..ServiceAccount::default()
        };
        accounts.create(&pp, &account).await?;
        Api::namespaced(self.client.clone(), &self.namespace)
            .create(&pp, &role(&name, &granted))
            .await?;
        let binding = RoleBinding {
            metadata: meta,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "Role".to_owned(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: name.clone(),
                namespace: Some(self.namespace.clone()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.client.clone(), &self.namespace)
            .create(&pp, &binding)
            .await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = accounts
            .create_token_request(&name, &pp, &request)
            .await?
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FakeError::Kubeconfig {
                path: ENV_KUBECONFIG.to_owned(),
                message: format!("the token request for service account {name} gave no token"),
            })?;
        let kubeconfig = dir.join("kubeconfig");
        self.write_token_kubeconfig(&kubeconfig, &token)?;
        Ok(TestIdentity {
            kubeconfig,
            name: Some(name),
            granted: Mutex::new(granted),
        })
    }

    /// A kubeconfig at `path` for the cluster of `VAULT_DR_TEST_KUBECONFIG`'s current context
    /// (its server and CA, paths made absolute) with `token` as the only credential. JSON,
    /// which kubeconfig readers take as YAML.
    fn write_token_kubeconfig(&self, path: &std::path::Path, token: &str) -> Result<(), FakeError> {
        let source = std::env::var(ENV_KUBECONFIG).unwrap_or_default();
        let failed = |message: String| FakeError::Kubeconfig {
            path: source.clone(),
            message,
        };
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&source).map_err(|e| failed(e.to_string()))?;
        let context = kubeconfig
            .current_context
            .as_deref()
            .and_then(|c| kubeconfig.contexts.iter().find(|n| n.name == c))
            .and_then(|n| n.context.as_ref())
            .ok_or_else(|| failed("no current context".into()))?;
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .ok_or_else(|| failed(format!("no cluster {:?}", context.cluster)))?;
        let cluster = serde_json::to_value(cluster).map_err(|e| failed(e.to_string()))?;
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{ "name": "vault-dr-test", "user": { "token": token } }],
            "contexts": [{ "name": "vault-dr-test", "context": {
                "cluster": context.cluster, "user": "vault-dr-test", "namespace": self.namespace,
            } }],
            "current-context": "vault-dr-test",
        });
        std::fs::write(path, doc.to_string()).map_err(|e| failed(e.to_string()))
    }

    /// Takes `resource` of API `group` from `identity`: every later request of it for that
    /// resource is answered 403 Forbidden.
    pub async fn revoke(
        &self,
        identity: &TestIdentity,
        group: &str,
        resource: &str,
    ) -> Result<(), FakeError> {
        let granted = {
            let mut granted = identity.granted.lock().unwrap_or_else(|p| p.into_inner());
            granted.retain(|(g, r)| !(g == group && r == resource));
            granted.clone()
        };
        match (&self.fake, &identity.name) {
            (Some(fake), _) => {
                fake.forbid(group, resource);
                Ok(())
            }
            (None, Some(name)) => {
                let roles: kube::Api<k8s_openapi::api::rbac::v1::Role> =
                    kube::Api::namespaced(self.client.clone(), &self.namespace);
                let mut current = roles.get(name).await?;
                current.rules = role(name, &granted).rules;
                roles
                    .replace(name, &kube::api::PostParams::default(), &current)
                    .await?;
                Ok(())
            }
            (None, None) => Err(FakeError::Kubeconfig {
                path: ENV_KUBECONFIG.to_owned(),
                message: "this identity was made for the fake apiserver".into(),
            }),
        }
    }

    /// Deletes what [`Self::identity`] created on a real cluster (nothing on the fake).
    pub async fn remove_identity(&self, identity: &TestIdentity) {
        let Some(name) = &identity.name else {
            return;
        };
        let dp = kube::api::DeleteParams::default();
        let ns = &self.namespace;
        let c = &self.client;
        let _ = kube::Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(c.clone(), ns)
            .delete(name, &dp)
            .await;
        let _ = kube::Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(c.clone(), ns)
            .delete(name, &dp)
            .await;
        let _ = kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(c.clone(), ns)
            .delete(name, &dp)
            .await;
    }
}

/// A client Service `name` on port 8200 selecting `selector`, as the chart's
/// `traffic.service` is before the coordinator switches it.
pub fn client_service(
    name: &str,
    selector: BTreeMap<String, String>,
) -> k8s_openapi::api::core::v1::Service {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..kube::api::ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                port: 8200,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// The cluster for one test: a fresh [`FakeApiServer`], or the cluster of the kubeconfig named
/// by `VAULT_DR_TEST_KUBECONFIG` (namespace from `VAULT_DR_TEST_NAMESPACE`, default `default`;
/// names get a unique suffix so runs do not collide).
pub async fn test_client() -> Result<TestKube, FakeError> {
    match std::env::var(ENV_KUBECONFIG).ok().filter(|p| !p.is_empty()) {
        Some(path) => {
            let failed = |message: String| FakeError::Kubeconfig {
                path: path.clone(),
                message,
            };
            let kubeconfig =
                kube::config::Kubeconfig::read_from(&path).map_err(|e| failed(e.to_string()))?;
            let namespace = std::env::var(ENV_NAMESPACE)
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            let mut config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            config.default_namespace = namespace.clone();
            let client = kube::Client::try_from(config.clone())?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let suffix = format!(
                "-{:x}{:x}{:x}",
                std::process::id(),
                nanos & 0xff_ffff,
                RUNS.fetch_add(1, Ordering::Relaxed)
            );
            Ok(TestKube {
                client,
                namespace,
                config,
                suffix,
                fake: None,
            })
        }
        None => {
            let fake = FakeApiServer::start().await?;
            let config = fake.config()?;
            Ok(TestKube {
                client: kube::Client::try_from(config.clone())?,
                namespace: "default".to_owned(),
                config,
                suffix: String::new(),
                fake: Some(fake),
            })
        }
    }
}

/// A pod object for a coordinator replica whose pod a test needs (the leader label): never
/// scheduled (a scheduling gate holds it), so that the test runs unchanged against a real
/// cluster, where the replicas run outside it.
pub fn replica_pod(
    name: &str,
    labels: &BTreeMap<String, String>,
) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "schedulingGates": [{ "name": "vault-dr.io/test-never-scheduled" }],
            "containers": [{ "name": "coordinator", "image": "registry.invalid/vault-dr:test" }],
        },
    }))
    .unwrap_or_else(|e| panic!("the replica pod does not decode: {e}"))
}
