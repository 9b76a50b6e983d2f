//! The Kubernetes manifests in deploy/k8s agree with config/jetmesh.toml: a
//! Deployment per role and per pool, a KEDA ScaledObject per pool whose limits
//! and thresholds are the pool's (the seed's scaling rules), the autoscaler
//! leaving slots alone, and a ConfigMap whose jetmesh.toml has the same pools.
//! Reads files only: no NATS server, no cluster.

use jetmesh_shared::Config;
use jetmesh_shared::config::PoolConfig;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const ROLES: [&str; 6] = [
    "chief",
    "planner",
    "router",
    "aggregator",
    "summary",
    "autoscaler",
];

/// One YAML document of one manifest file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file)
    }
}

fn repo() -> PathBuf {
    jetmesh_tests::root()
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

fn reference_config() -> Config {
    let path = repo().join("config/jetmesh.toml");
    let text = std::fs::read_to_string(&path).expect("read config/jetmesh.toml");
    Config::from_toml(&text).expect("config/jetmesh.toml loads")
}

/// Every document of every .yaml/.yml file in deploy/k8s, in file order.
fn manifests() -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in deploy/k8s");
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {i} does not parse: {e}"));
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> {
    docs.iter().filter(move |d| d.kind() == kind)
}

fn containers(deployment: &Doc) -> &Vec<Value> {
    deployment.value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no containers", deployment.what()))
}

/// The jetmesh command line of a container, without the `jetmesh` itself: the
/// image's entrypoint is `jetmesh`, so `args` alone is the command line, or
/// `command` names jetmesh and `args` follow it.
fn jetmesh_args(container: &Value) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut line = strings(&container["command"]);
    line.extend(strings(&container["args"]));
    if line
        .first()
        .is_some_and(|c| c == "jetmesh" || c.ends_with("/jetmesh"))
    {
        line.remove(0);
    }
    line
}

/// The pool a Deployment's first container serves with `worker --pool <pool>`.
fn worker_pool(deployment: &Doc) -> Option<String> {
    let args = jetmesh_args(containers(deployment).first()?);
    if args.first().map(String::as_str) != Some("worker") {
        return None;
    }
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "--pool" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--pool=").map(String::from)
        }
    })
}

fn deployment_for_role<'a>(docs: &'a [Doc], role: &str) -> Option<&'a Doc> {
    of_kind(docs, "Deployment").find(|d| {
        containers(d)
            .first()
            .is_some_and(|c| jetmesh_args(c) == [role])
    })
}

fn deployments_for_pool<'a>(docs: &'a [Doc], pool: &str) -> Vec<&'a Doc> {
    of_kind(docs, "Deployment")
        .filter(|d| worker_pool(d).as_deref() == Some(pool))
        .collect()
}

/// The ScaledObjects whose target is the Deployment `name`.
fn scaled_objects_for<'a>(docs: &'a [Doc], name: &str) -> Vec<&'a Doc> {
    of_kind(docs, "ScaledObject")
        .filter(|s| {
            let target = &s.value["spec"]["scaleTargetRef"];
            target["name"] == name
                && target["kind"].as_str().unwrap_or("Deployment") == "Deployment"
        })
        .collect()
}

fn nats_trigger(scaled: &Doc) -> &Value {
    let triggers = scaled.value["spec"]["triggers"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no triggers", scaled.what()));
    let found: Vec<&Value> = triggers
        .iter()
        .filter(|t| t["type"] == "nats-jetstream")
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{}: expected one nats-jetstream trigger",
        scaled.what()
    );
    found[0]
}

fn configmap_data<'a>(docs: &'a [Doc], name: &str) -> &'a serde_json::Map<String, Value> {
    of_kind(docs, "ConfigMap")
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in deploy/k8s"))
        .value["data"]
        .as_object()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data"))
}

/// The environment a container gets from its `envFrom` ConfigMaps (which
/// must be in deploy/k8s) and its `env` values, later entries winning.
fn container_env(docs: &[Doc], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let prefix = source["prefix"].as_str().unwrap_or_default();
            for (k, v) in configmap_data(docs, name) {
                let v = v.as_str().expect("ConfigMap data values are strings");
                env.insert(format!("{prefix}{k}"), v.to_string());
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env entry without a name");
        match var["value"].as_str() {
            Some(v) => env.insert(name.to_string(), v.to_string()),
            None => env.remove(name),
        };
    }
    env
}

/// The ConfigMap that holds jetmesh.toml, and the configuration it loads to.
fn configmap_config(docs: &[Doc]) -> (&Doc, Config) {
    let holders: Vec<&Doc> = of_kind(docs, "ConfigMap")
        .filter(|c| c.value["data"]["jetmesh.toml"].is_string())
        .collect();
    assert_eq!(holders.len(), 1, "expected one ConfigMap with jetmesh.toml");
    let text = holders[0].value["data"]["jetmesh.toml"].as_str().unwrap();
    let config = Config::from_toml(text)
        .unwrap_or_else(|e| panic!("{}: jetmesh.toml does not load: {e}", holders[0].what()));
    (holders[0], config)
}

#[test]
fn every_document_parses_and_names_itself() {
    let docs = manifests();
    let files: Vec<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for wanted in [
        "kustomization.yaml",
        "keda.yaml",
        "pools.yaml",
        "roles.yaml",
    ] {
        assert!(files.contains(&wanted), "deploy/k8s/{wanted} is missing");
    }
    for (i, doc) in docs.iter().enumerate() {
        let v = &doc.value;
        assert!(v.is_object(), "{}: document {i} is not a mapping", doc.file);
        for (field, value) in [
            ("apiVersion", &v["apiVersion"]),
            ("kind", &v["kind"]),
            ("metadata.name", &v["metadata"]["name"]),
        ] {
            assert!(
                value.as_str().is_some_and(|s| !s.is_empty()),
                "{}: a document has no {field}: {v}",
                doc.file
            );
        }
    }
    // The kustomization lists every other manifest.
    let kustomization = of_kind(&docs, "Kustomization")
        .next()
        .expect("kustomization");
    let resources: Vec<&str> = kustomization.value["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for doc in &docs {
        if doc.file != "kustomization.yaml" {
            assert!(
                resources.contains(&doc.file.as_str()),
                "kustomization.yaml does not list {}",
                doc.file
            );
        }
    }
}

#[test]
fn every_pool_has_a_worker_deployment_and_a_scaled_object() {
    let docs = manifests();
    let config = reference_config();
    let names = config.names();
    assert_eq!(names.queues_stream(), "MESH_QUEUES");
    assert!(!config.pools.is_empty());
    for (pool, cfg) in &config.pools {
        let deployments = deployments_for_pool(&docs, pool);
        assert_eq!(
            deployments.len(),
            1,
            "expected one Deployment running `jetmesh worker --pool {pool}`"
        );
        let deployment = deployments[0];
        let scaled = scaled_objects_for(&docs, deployment.name());
        assert_eq!(
            scaled.len(),
            1,
            "expected one ScaledObject targeting {}",
            deployment.what()
        );
        let so = scaled[0];
        let spec = &so.value["spec"];
        let what = so.what();
        assert_eq!(spec["minReplicaCount"], cfg.min as u64, "{what}: pool min");
        assert_eq!(spec["maxReplicaCount"], cfg.max as u64, "{what}: pool max");
        assert_eq!(spec["cooldownPeriod"], cfg.idle_secs, "{what}: idle_secs");
        // Between min and max (min >= 1) the HPA scales, not cooldownPeriod:
        // its scale-down window is idle_secs too, and it scales up one pod at a time.
        let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
        assert_eq!(
            behavior["scaleDown"]["stabilizationWindowSeconds"], cfg.idle_secs,
            "{what}: scale-down window = idle_secs"
        );
        let up_policies = behavior["scaleUp"]["policies"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no scaleUp policies"));
        assert!(
            !up_policies.is_empty()
                && up_policies
                    .iter()
                    .all(|p| p["type"] == "Pods" && p["value"] == 1),
            "{what}: scale-up must be +1 pod per step: {up_policies:?}"
        );

        let trigger = nats_trigger(so);
        let meta = &trigger["metadata"];
        assert_eq!(meta["stream"], names.queues_stream(), "{what}: stream");
        assert_eq!(
            meta["consumer"],
            names.pool_consumer(pool).as_str(),
            "{what}: consumer"
        );
        // KEDA takes trigger metadata as strings.
        assert_eq!(
            meta["lagThreshold"],
            cfg.scale_up_queue.to_string().as_str(),
            "{what}: lagThreshold = scale_up_queue, as a string"
        );
        assert!(
            meta["natsServerMonitoringEndpoint"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{what}: natsServerMonitoringEndpoint"
        );
        assert!(meta["account"].is_string(), "{what}: account");
    }
}

#[test]
fn nothing_scales_or_runs_a_pool_missing_from_the_config() {
    let docs = manifests();
    let config = reference_config();
    let names = config.names();
    for so in of_kind(&docs, "ScaledObject") {
        let consumer = nats_trigger(so)["metadata"]["consumer"]
            .as_str()
            .unwrap_or_default();
        let pool = names
            .pool_of_consumer(consumer)
            .unwrap_or_else(|| panic!("{}: consumer {consumer:?} is no pool's", so.what()));
        assert!(
            config.pools.contains_key(pool),
            "{}: pool {pool} is not in config/jetmesh.toml",
            so.what()
        );
        // And it scales that pool's workers, not another Deployment.
        let target = so.value["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .unwrap_or_default();
        let deployment = of_kind(&docs, "Deployment")
            .find(|d| d.name() == target)
            .unwrap_or_else(|| panic!("{}: no Deployment {target}", so.what()));
        assert_eq!(
            worker_pool(deployment).as_deref(),
            Some(pool),
            "{} scales {}, which does not serve pool {pool}",
            so.what(),
            deployment.what()
        );
    }
    for deployment in of_kind(&docs, "Deployment") {
        if let Some(pool) = worker_pool(deployment) {
            assert!(
                config.pools.contains_key(&pool),
                "{}: pool {pool} is not in config/jetmesh.toml",
                deployment.what()
            );
        }
    }
}

#[test]
fn every_role_has_a_deployment() {
    let docs = manifests();
    for role in ROLES {
        let deployment = deployment_for_role(&docs, role)
            .unwrap_or_else(|| panic!("no Deployment runs `jetmesh {role}`"));
        if matches!(role, "chief" | "autoscaler") {
            // A leader and a standby, elected through leases.
            let replicas = deployment.value["spec"]["replicas"].as_u64().unwrap_or(1);
            assert!(replicas >= 2, "{}: {replicas} replicas", deployment.what());
        }
    }
}

#[test]
fn pods_drain_before_sigkill_and_request_resources() {
    let docs = manifests();
    for deployment in of_kind(&docs, "Deployment") {
        let pod = &deployment.value["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_u64();
        assert!(
            grace.is_some_and(|g| g > 30),
            "{}: terminationGracePeriodSeconds must exceed the 30 s drain, is {grace:?}",
            deployment.what()
        );
        for c in containers(deployment) {
            assert!(
                c["resources"]["requests"].is_object(),
                "{}: container {} has no resource requests",
                deployment.what(),
                c["name"]
            );
        }
    }
}

#[test]
fn the_autoscaler_leaves_slots_to_keda() {
    let docs = manifests();
    let deployment = deployment_for_role(&docs, "autoscaler").expect("autoscaler Deployment");
    let env = container_env(&docs, &containers(deployment)[0]);
    assert_eq!(
        env.get("JETMESH_AUTOSCALER__SCALE_SLOTS")
            .map(String::as_str),
        Some("false"),
        "{}: KEDA scales the pools, so JETMESH_AUTOSCALER__SCALE_SLOTS must be false",
        deployment.what()
    );
}

#[test]
fn the_configmap_config_has_the_pools_of_config_jetmesh_toml() {
    let docs = manifests();
    let reference = reference_config();
    let (holder, config) = configmap_config(&docs);
    let what = holder.what();
    assert!(
        !config.nats.url.is_empty(),
        "{what}: [nats] url must name the NATS service"
    );
    assert_eq!(config.mesh.prefix, reference.mesh.prefix, "{what}: prefix");
    let limits = |pools: &BTreeMap<String, PoolConfig>| -> Vec<(String, usize, usize)> {
        pools
            .iter()
            .map(|(n, p)| (n.clone(), p.min, p.max))
            .collect()
    };
    assert_eq!(
        limits(&config.pools),
        limits(&reference.pools),
        "{what}: pools and their min/max differ from config/jetmesh.toml"
    );
    for (pool, cfg) in &reference.pools {
        assert_eq!(
            &config.pools[pool], cfg,
            "{what}: pool {pool} differs from config/jetmesh.toml"
        );
    }
}

#[test]
fn every_deployment_reads_the_configmap_config() {
    let docs = manifests();
    let (holder, _) = configmap_config(&docs);
    for deployment in of_kind(&docs, "Deployment") {
        let what = deployment.what();
        let pod = &deployment.value["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["configMap"]["name"] == holder.name())
            .unwrap_or_else(|| panic!("{what}: no volume from ConfigMap {}", holder.name()));
        for c in containers(deployment) {
            let path = container_env(&docs, c)
                .remove("JETMESH_CONFIG")
                .unwrap_or_else(|| panic!("{what}: JETMESH_CONFIG is not set"));
            let mounted = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["name"] == volume["name"])
                .any(|m| {
                    let dir = m["mountPath"].as_str().unwrap_or_default();
                    match m["subPath"].as_str() {
                        Some(sub) => path == dir && sub == "jetmesh.toml",
                        None => path == format!("{}/jetmesh.toml", dir.trim_end_matches('/')),
                    }
                });
            assert!(
                mounted,
                "{what}: JETMESH_CONFIG={path} is not the mounted jetmesh.toml"
            );
        }
    }
}
