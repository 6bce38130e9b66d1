//! Deployment artifacts: the Kubernetes manifests in `deploy/k8s`, the compose file
//! `deploy/compose.yaml` and the Dockerfile.
//!
//! * `kubernetes_manifests_validate_and_agree`: every document validates strictly against the
//!   Kubernetes schemas of the oldest and newest versions we support (PyPI's
//!   `kubernetes-validate`, pinned, in its own venv under target/pyenv; a missing Python fails,
//!   never skips). The ServiceMonitor, a custom resource without a Kubernetes schema, is checked
//!   against `tests/k8s/servicemonitor.schema.json` instead (tests/k8s/validate.py); no other kind
//!   is let through unchecked. Then the manifests must agree with each other and with the code:
//!   the configuration in the ConfigMap loads, its port, certificate, database and credential
//!   files are where the Deployment mounts them, every Secret reference exists, the probes hit
//!   /healthz and /readyz, the pod runs as non-root on a read-only root filesystem, and
//!   terminationGracePeriodSeconds outlasts the longest graceful stop the daemon can take.
//! * `dockerfile_runs_as_the_manifests_user_and_checks_its_health`: a HEALTHCHECK that needs no
//!   curl (`psbroker health`), and the same numeric user as the Deployment.
//! * `health_command_tells_a_live_daemon_from_a_dead_one`: `psbroker health` itself.
//! * `compose_file_validates_and_agrees_with_the_code`: `deploy/compose.yaml` (three nodes on
//!   one PostgreSQL, one simulator, Prometheus, Grafana) validates against the Compose
//!   Specification's JSON schema (vendored in `tests/compose`, with pinned jsonschema and PyYAML
//!   in a venv; no docker needed), then agrees with the code: the mounted configuration loads
//!   with the image's and the service's environment on top (as `Config::load` layers them), every
//!   node's store is the postgres service, each node has its own data volume, plain HTTP is
//!   published on loopback only, the profile reaches the sim service's port, one node starts
//!   first (it writes the bootstrap token), Prometheus scrapes every node's port with a token
//!   the compose file makes and loads the alert rules, Grafana gets the dashboard.
//!   `compose_schema_refuses_what_compose_refuses` keeps the schema check from being vacuous.

mod common;

use common::daemon::Daemon;
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest and the newest Kubernetes the manifests are validated against.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of deploy/k8s (as JSON), after validating them all.
fn validated_documents() -> Vec<(String, Json)> {
    let venv = common::pyenv::venv("kubernetes-validate", &[KUBERNETES_VALIDATE]);
    let out = Command::new(&venv.python)
        .arg(root().join("tests/k8s/validate.py"))
        .arg(root().join("deploy/k8s"))
        .arg(root().join("tests/k8s/servicemonitor.schema.json"))
        .args(KUBERNETES_VERSIONS)
        .output()
        .expect("run tests/k8s/validate.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("validate.py said no JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let errors: Vec<&str> = report["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(errors.is_empty() && out.status.success(), "the manifests do not validate:\n{}", errors.join("\n"));
    report["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["file"].as_str().unwrap().to_string(), d["document"].clone()))
        .collect()
}

struct Manifests(Vec<(String, Json)>);

impl Manifests {
    fn one(&self, kind: &str, name: &str) -> &Json {
        self.0
            .iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
    }

    /// The key `key` of the Secret `name` (in secrets.example.yaml): it must exist.
    fn assert_secret_key(&self, name: &str, key: &str, by: &str) {
        let secret = self.one("Secret", name);
        assert!(
            secret["stringData"].get(key).is_some(),
            "{by} reads key {key} of Secret {name}, which has no such key"
        );
    }
}

fn labels_match(selector: &Json, labels: &Json) -> bool {
    selector.as_object().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_validate_and_agree() {
    let m = Manifests(validated_documents());

    // kustomization.yaml lists every manifest but the placeholder Secrets.
    let kustomization = m.0.iter().find(|(f, _)| f == "kustomization.yaml").map(|(_, d)| d.clone()).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: BTreeSet<&str> =
        kustomization["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    let files: BTreeSet<&str> =
        m.0.iter()
            .map(|(f, _)| f.as_str())
            .filter(|f| !["kustomization.yaml", "secrets.example.yaml"].contains(f))
            .collect();
    assert_eq!(listed, files, "kustomization.yaml resources");

    let deployment = m.one("Deployment", "psbroker");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(&deployment["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(deployment["spec"]["replicas"], 1, "SQLite: one replica");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "two pods never share the database");

    // Non-root, read-only root filesystem, no privileges, resources set.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for (kind, resource) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
        assert!(c["resources"][kind][resource].is_string(), "resources.{kind}.{resource}");
    }

    // Writable only where data belongs: the claim and an emptyDir.
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"));
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount_of =
        |name: &str| mounts.iter().find(|v| v["name"] == name).unwrap()["mountPath"].as_str().unwrap().to_string();
    for mount in mounts {
        let v = volume(mount["name"].as_str().unwrap());
        if mount["readOnly"] != true {
            assert!(
                v.get("persistentVolumeClaim").is_some() || v.get("emptyDir").is_some(),
                "{} is writable but is neither the data claim nor an emptyDir",
                mount["name"]
            );
        }
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            m.one("Secret", secret);
        }
        if let Some(map) = v["configMap"]["name"].as_str() {
            m.one("ConfigMap", map);
        }
        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            m.one("PersistentVolumeClaim", claim);
        }
    }
    for env in c["env"].as_array().unwrap() {
        if let Some(r) = env["valueFrom"].get("secretKeyRef") {
            m.assert_secret_key(r["name"].as_str().unwrap(), r["key"].as_str().unwrap(), "the Deployment");
        }
    }

    // The configuration in the ConfigMap loads, and what it names is where the pod has it.
    let env = |name: &str| {
        c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap()["value"].as_str().unwrap().to_string()
    };
    let config_path = PathBuf::from(env("PSBROKER_CONFIG"));
    let config_volume = volume(
        mounts.iter().find(|mnt| config_path.starts_with(mnt["mountPath"].as_str().unwrap())).unwrap()["name"]
            .as_str()
            .unwrap(),
    );
    let config_map = m.one("ConfigMap", config_volume["configMap"]["name"].as_str().unwrap());
    let file_name = config_path.file_name().unwrap().to_str().unwrap();
    let text = config_map["data"][file_name].as_str().unwrap_or_else(|| panic!("the ConfigMap has no {file_name}"));
    let config = psbroker::config::Config::from_toml(text).expect("the ConfigMap's configuration loads");
    let port: u16 = config.server.listen.rsplit(':').next().unwrap().parse().unwrap();
    let https = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "https").expect("a port named https");
    assert_eq!(https["containerPort"].as_u64(), Some(port as u64), "containerPort is server.listen's port");
    let tls = config.server.tls.as_ref().expect("HTTPS beyond loopback");
    let tls_dir = PathBuf::from(mount_of("tls"));
    let tls_secret = volume("tls")["secret"]["secretName"].as_str().unwrap();
    for file in [&tls.cert_file, &tls.key_file] {
        assert_eq!(file.parent(), Some(tls_dir.as_path()), "{} is in the TLS mount", file.display());
        m.assert_secret_key(tls_secret, file.file_name().unwrap().to_str().unwrap(), "server.tls");
    }
    let db = config.store.url.strip_prefix("sqlite://").expect("SQLite");
    assert!(Path::new(db).starts_with(mount_of("data")), "the database {db} is on the data volume");
    let admins_dir = PathBuf::from(mount_of("admin-credentials"));
    let admins_secret = volume("admin-credentials")["secret"]["secretName"].as_str().unwrap();
    for admin in &config.admins {
        let file = PathBuf::from(admin.credential.strip_prefix("file:").expect("credentials are file: references"));
        assert_eq!(
            file.parent(),
            Some(admins_dir.as_path()),
            "{}'s credential is in the admin-credentials mount",
            admin.name
        );
        m.assert_secret_key(admins_secret, file.file_name().unwrap().to_str().unwrap(), "an admin credential");
    }

    // Probes: alive on /healthz, ready on /readyz, on the https port.
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str(), get["scheme"].as_str()),
            (Some(path), Some("https"), Some("HTTPS")),
            "{probe}"
        );
    }

    // SIGTERM: the kubelet waits longer than the longest graceful stop.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let longest = psbroker::app::longest_stop().as_secs();
    assert!(
        grace > longest,
        "terminationGracePeriodSeconds {grace} must exceed the longest graceful stop, {longest} s"
    );

    // Service, PodDisruptionBudget and ServiceMonitor find the pod, its port and their Secrets.
    let service = m.one("Service", "psbroker");
    assert!(labels_match(&service["spec"]["selector"], pod_labels), "the Service selects the pod");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "https");
    let pdb = m.one("PodDisruptionBudget", "psbroker");
    assert!(labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels), "the budget covers the pod");
    let monitor = m.one("ServiceMonitor", "psbroker");
    assert!(labels_match(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_eq!((endpoint["path"].as_str(), endpoint["scheme"].as_str()), (Some("/metrics"), Some("https")));
    let credentials = &endpoint["authorization"]["credentials"];
    m.assert_secret_key(
        credentials["name"].as_str().unwrap(),
        credentials["key"].as_str().unwrap(),
        "the ServiceMonitor",
    );
    let ca = &endpoint["tlsConfig"]["ca"]["secret"];
    m.assert_secret_key(ca["name"].as_str().unwrap(), ca["key"].as_str().unwrap(), "the ServiceMonitor's CA");
}

#[test]
fn dockerfile_runs_as_the_manifests_user_and_checks_its_health() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let healthcheck =
        runtime.lines().find(|l| l.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK in the runtime image");
    assert!(healthcheck.contains(r#"CMD ["/usr/local/bin/psbroker", "health"]"#), "{healthcheck}");
    assert!(runtime.lines().all(|l| !(l.contains("apt-get install") && l.contains("curl"))), "the check needs no curl");
    let user = runtime.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    let uid: u64 = user.split(':').next().unwrap().trim().parse().expect("a numeric USER, for runAsNonRoot");
    let deployment = std::fs::read_to_string(root().join("deploy/k8s/deployment.yaml")).unwrap();
    assert!(deployment.contains(&format!("runAsUser: {uid}\n")), "the Deployment runs as the image's user {uid}");
}

fn health(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_psbroker"))
        .arg("health")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn health_command_tells_a_live_daemon_from_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, common::config_text(1, 1, 1, 1, "")).unwrap();
    let store = format!("sqlite://{}", dir.path().join("psbroker.db").display());
    let daemon = Daemon::start_with_env(&config, "info", &[("PSBROKER_STORE__URL", &store)]);
    let addr = daemon.url.trim_start_matches("http://").to_string();

    // With the address given, and derived from the configuration (as in the container).
    let (ok, said) = health(&["--url", &daemon.url], &[]);
    assert!(ok && said.contains("ok"), "{said}");
    let config_arg = config.to_str().unwrap();
    let (ok, said) = health(&["--config", config_arg, "--ready"], &[("PSBROKER_SERVER__LISTEN", &addr)]);
    assert!(ok && said.contains("ready"), "{said}");
    // PSBROKER_URL (for the other commands) does not send the probe elsewhere.
    let (ok, said) = health(
        &["--config", config_arg],
        &[("PSBROKER_SERVER__LISTEN", &addr), ("PSBROKER_URL", "http://127.0.0.1:9")],
    );
    assert!(ok, "{said}");

    assert!(daemon.terminate());
    let (ok, said) = health(&["--url", &format!("http://{addr}")], &[]);
    assert!(!ok && said.contains("cannot reach"), "a stopped daemon is not healthy: {said}");
}

// ---- deploy/compose.yaml: several nodes on one PostgreSQL ---------------------------------

const JSONSCHEMA: &str = "jsonschema==4.26.0";
const PYYAML: &str = "PyYAML==6.0.3";

/// What tests/compose/validate.py says of `compose` (with `others` loaded alongside): its
/// report, and whether it exited 0.
fn validate_compose(compose: &Path, others: &[PathBuf]) -> (Json, bool) {
    let venv = common::pyenv::venv("compose-validate", &[JSONSCHEMA, PYYAML]);
    let out = Command::new(&venv.python)
        .arg(root().join("tests/compose/validate.py"))
        .arg(root().join("tests/compose/compose-spec.json"))
        .arg(compose)
        .args(others)
        .output()
        .expect("run tests/compose/validate.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("validate.py said no JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (report, out.status.success())
}

/// One entry of a service's short-syntax `volumes`: `source:target[:ro]`.
struct Mount {
    source: String,
    target: String,
    read_only: bool,
}

impl Mount {
    /// A named volume (declared under the top-level `volumes`), not a host path.
    fn named(&self) -> bool {
        !self.source.starts_with(['.', '/', '~'])
    }
}

struct Service<'a> {
    name: &'a str,
    spec: &'a Json,
}

impl Service<'_> {
    fn mounts(&self) -> Vec<Mount> {
        let Some(volumes) = self.spec["volumes"].as_array() else { return vec![] };
        volumes
            .iter()
            .map(|v| {
                let v = v.as_str().unwrap_or_else(|| panic!("{}: volumes in short syntax", self.name));
                let parts: Vec<&str> = v.split(':').collect();
                assert!(parts.len() == 2 || parts.len() == 3, "{}: volume {v}", self.name);
                let read_only = parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro"));
                Mount { source: parts[0].to_string(), target: parts[1].to_string(), read_only }
            })
            .collect()
    }

    /// The mount whose target is `path` or a folder holding it.
    fn mount_of(&self, path: &str) -> Mount {
        self.mounts()
            .into_iter()
            .filter(|m| Path::new(path).starts_with(&m.target))
            .max_by_key(|m| m.target.len())
            .unwrap_or_else(|| panic!("{}: nothing is mounted at {path}", self.name))
    }

    /// The host file a bind mount at `path` shows, relative to the compose file's folder.
    fn host_file(&self, path: &str) -> PathBuf {
        let m = self.mount_of(path);
        assert!(!m.named() && m.read_only, "{}: {path} is a read-only bind mount of the repository", self.name);
        let rest = Path::new(path).strip_prefix(&m.target).unwrap();
        let mut file = root().join("deploy").join(&m.source);
        if !rest.as_os_str().is_empty() {
            file = file.join(rest);
        }
        assert!(file.is_file(), "{}: {} (mounted at {path}) is not a file", self.name, file.display());
        file.canonicalize().unwrap()
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.spec["environment"]
            .get(name)
            .map(|v| v.as_str().unwrap_or_else(|| panic!("{}: {name} is a string", self.name)))
    }

    fn command(&self) -> Vec<&str> {
        self.spec["command"].as_array().map(|c| c.iter().map(|a| a.as_str().unwrap()).collect()).unwrap_or_default()
    }

    fn depends_on(&self, other: &str) -> Option<&str> {
        self.spec["depends_on"].get(other).map(|d| d["condition"].as_str().unwrap_or("service_started"))
    }

    fn psbroker_image(&self) -> bool {
        self.spec["build"].is_object()
    }

    /// The configuration as this container loads it: the mounted file (`PSBROKER_CONFIG`),
    /// under the image's `ENV` and this service's environment, layered as `Config::load` does.
    fn config(&self) -> (PathBuf, psbroker::config::Config) {
        let path = self.env("PSBROKER_CONFIG").unwrap_or_else(|| panic!("{}: PSBROKER_CONFIG", self.name));
        let file = self.host_file(path);
        let mut env = dockerfile_env();
        for (k, v) in self.spec["environment"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        (file.clone(), layered_config(&file, &env))
    }
}

/// The runtime image's `ENV KEY=VALUE` lines.
fn dockerfile_env() -> std::collections::BTreeMap<String, String> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    runtime
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// `Config::load(Some(file))` with `env` in place of the process environment: only
/// `PSBROKER_SECTION__KEY` names, lowercased, `__` between levels, values read as figment reads
/// environment values.
fn layered_config(file: &Path, env: &std::collections::BTreeMap<String, String>) -> psbroker::config::Config {
    use figment::providers::{Format, Serialized, Toml};
    use figment::value::{Dict, Value};
    fn insert(dict: &mut Dict, keys: &[String], value: Value) {
        match keys {
            [last] => {
                dict.insert(last.clone(), value);
            }
            [first, rest @ ..] => {
                let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, inner) = entry else { panic!("{first} is both a key and a section") };
                insert(inner, rest, value)
            }
            [] => unreachable!(),
        }
    }
    let mut overrides = Dict::new();
    for (k, v) in env {
        let Some(key) = k.strip_prefix("PSBROKER_").filter(|k| k.contains("__")) else { continue };
        let keys: Vec<String> = key.split("__").map(|k| k.to_ascii_lowercase()).collect();
        insert(&mut overrides, &keys, v.parse::<Value>().unwrap());
    }
    let config: psbroker::config::Config = figment::Figment::from(Toml::file_exact(file))
        .merge(Serialized::defaults(overrides))
        .extract()
        .unwrap_or_else(|e| panic!("{} with the environment: {e}", file.display()));
    config.validate().unwrap_or_else(|e| panic!("{} with the environment: {e}", file.display()));
    config
}

/// `host:port` of a URL such as `postgres://u:p@host:5432/db` or `http://host:5985/path`.
fn url_host_port(url: &str) -> (String, u16) {
    let u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    (u.host_str().unwrap().to_string(), u.port_or_known_default().unwrap_or(5432))
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

fn seconds(duration: &str) -> u64 {
    duration.strip_suffix('s').and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{duration}: whole seconds"))
}

#[test]
fn compose_file_validates_and_agrees_with_the_code() {
    let deploy = root().join("deploy");
    let others: Vec<PathBuf> =
        ["compose/prometheus.yml", "compose/grafana/datasources.yml", "compose/grafana/dashboards.yml"]
            .iter()
            .map(|f| deploy.join(f))
            .collect();
    let (report, ok) = validate_compose(&deploy.join("compose.yaml"), &others);
    let errors: Vec<&str> = report["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(errors.is_empty() && ok, "deploy/compose.yaml does not validate:\n{}", errors.join("\n"));
    let compose = &report["compose"];
    let other = |f: &str| &report["files"][deploy.join(f).to_str().unwrap()];
    let services: Vec<Service> =
        compose["services"].as_object().unwrap().iter().map(|(name, spec)| Service { name, spec }).collect();
    let declared: BTreeSet<&str> = compose["volumes"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for s in &services {
        for m in s.mounts().iter().filter(|m| m.named()) {
            assert!(declared.contains(m.source.as_str()), "{}: volume {} is not declared", s.name, m.source);
        }
        if s.psbroker_image() {
            let build = &s.spec["build"];
            assert_eq!(
                deploy
                    .join(build["context"].as_str().unwrap())
                    .join(build["dockerfile"].as_str().unwrap())
                    .canonicalize()
                    .unwrap(),
                root().join("Dockerfile").canonicalize().unwrap(),
                "{}: built from the repository's Dockerfile",
                s.name
            );
        }
    }

    // PostgreSQL: the official image, with a health check the nodes wait for.
    let postgres = services
        .iter()
        .filter(|s| s.spec["image"].as_str().is_some_and(|i| i.starts_with("postgres:")))
        .collect::<Vec<_>>();
    assert_eq!(postgres.len(), 1, "one PostgreSQL");
    let postgres = postgres[0];
    assert!(postgres.spec["healthcheck"]["test"].to_string().contains("pg_isready"), "PostgreSQL's health check");
    let pg_user = postgres.env("POSTGRES_USER").unwrap();
    let pg_password = postgres.env("POSTGRES_PASSWORD").unwrap();
    let pg_db = postgres.env("POSTGRES_DB").unwrap();

    // One simulator, on the wire protocol.
    let sims: Vec<&Service> =
        services.iter().filter(|s| s.psbroker_image() && s.command().first() == Some(&"sim")).collect();
    assert_eq!(sims.len(), 1, "one `psbroker sim`");
    let sim = sims[0];
    let sim_listen = match sim.command()[..] {
        ["sim", "--listen", addr] => addr,
        ref other => panic!("sim: command {other:?}"),
    };
    let sim_port = port_of(sim_listen);
    let (sim_file, sim_config) = sim.config();

    // Three nodes: the same configuration file, each its own data volume, the shared store.
    let nodes: Vec<&Service> =
        services.iter().filter(|s| s.psbroker_image() && s.command().first() == Some(&"serve")).collect();
    assert_eq!(nodes.len(), 3, "three psbroker nodes");
    let mut data_volumes = BTreeSet::new();
    let mut scrape_targets = BTreeSet::new();
    let mut bootstrap_writers = Vec::new();
    let image_env = dockerfile_env();
    for node in &nodes {
        let name = node.name;
        let (file, config) = node.config();
        assert_eq!(file, sim_file, "{name} and the simulator read the same configuration");
        let file_alone = psbroker::config::Config::from_toml(&std::fs::read_to_string(&file).unwrap())
            .expect("the file loads alone");

        // The store: PostgreSQL of the postgres service, the file and the environment agreeing
        // (the image's SQLite default must be overridden, or the node would run alone).
        let url = &config.store.url;
        assert!(
            url.starts_with("postgres://"),
            "{name}: store {url} (the image's default is {:?})",
            image_env.get("PSBROKER_STORE__URL")
        );
        assert_eq!(&file_alone.store.url, url, "{name}: the file's [store] url and PSBROKER_STORE__URL agree");
        let parsed = reqwest::Url::parse(url).unwrap();
        assert_eq!(url_host_port(url), (postgres.name.to_string(), 5432), "{name}: the store is the postgres service");
        assert_eq!(
            (parsed.username(), parsed.password(), parsed.path().trim_start_matches('/')),
            (pg_user, Some(pg_password), pg_db),
            "{name}: the store's user, password and database are postgres'"
        );
        assert_eq!(node.depends_on(postgres.name), Some("service_healthy"), "{name} waits for PostgreSQL");
        assert!(node.depends_on(sim.name).is_some(), "{name} starts after the simulator");

        // Its identity: the node-id file in its data directory, on a volume of its own.
        let data_dir = config.store.data_dir.clone().expect("[store] data_dir").to_str().unwrap().to_string();
        let data = node.mount_of(&data_dir);
        assert!(data.named() && !data.read_only && data.target == data_dir, "{name}: {data_dir} is a writable volume");
        assert!(data_volumes.insert(data.source.clone()), "{name} shares its data volume {}", data.source);
        let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        assert!(
            dockerfile.contains(&format!("install -d -o 10001 -g 10001 {data_dir}")),
            "the image creates {data_dir} for its user, so a new volume there is writable"
        );
        assert_eq!(node.spec["read_only"], true, "{name}: read-only root filesystem");
        for m in node.mounts().iter().filter(|m| m.target != data_dir) {
            assert!(m.read_only, "{name}: {} is writable", m.target);
        }

        // The listener: without TLS it is published on the host's loopback only.
        let port = port_of(&config.server.listen);
        for published in node.spec["ports"].as_array().unwrap() {
            let p = published.as_str().unwrap();
            assert!(p.ends_with(&format!(":{port}")), "{name}: {p} publishes server.listen's port {port}");
            if config.server.tls.is_none() {
                assert!(p.starts_with("127.0.0.1:"), "{name}: plain HTTP published beyond loopback ({p})");
            }
        }
        scrape_targets.insert(format!("{name}:{port}"));
        let health = &node.spec["healthcheck"]["test"];
        assert!(
            health[1].as_str().is_some_and(|b| b.ends_with("/psbroker")) && health[2] == "health",
            "{name}: the check is `psbroker health`: {health}"
        );
        let grace = seconds(node.spec["stop_grace_period"].as_str().expect("stop_grace_period"));
        assert!(grace > psbroker::app::longest_stop().as_secs(), "{name}: stop_grace_period outlasts a drain");

        // The remote service: every wsman profile reaches the simulator service.
        for (profile, p) in &config.profiles {
            if p.kind == psbroker::config::ProfileKind::Wsman {
                let uri = p.connection_uri.replace("{tenant}", "t");
                assert_eq!(url_host_port(&uri), (sim.name.to_string(), sim_port), "{name}: profile {profile}");
            }
        }
        // Admins' credentials from the environment, which the simulator also has (its passwords).
        for admin in &config.admins {
            if let Some(var) = admin.credential.strip_prefix("env:") {
                assert!(node.env(var).is_some(), "{name}: admin {} needs {var}", admin.name);
                assert_eq!(node.env(var), sim.env(var), "{name} and the simulator agree on {}'s password", admin.name);
            }
        }
        let others_first: Vec<&str> =
            nodes.iter().filter(|n| node.depends_on(n.name) == Some("service_healthy")).map(|n| n.name).collect();
        if others_first.is_empty() {
            bootstrap_writers.push(name);
        }
    }
    assert!(!sim_config.admins.is_empty(), "the simulator has accounts: the admins' credentials");
    // One node starts first and writes the bootstrap token; the others find a token and write none.
    assert_eq!(bootstrap_writers.len(), 1, "exactly one node starts before the others: {bootstrap_writers:?}");

    // Prometheus: scrapes every node's metrics port with a token, and loads the alert rules.
    let prometheus = services
        .iter()
        .find(|s| s.spec["image"].as_str().is_some_and(|i| i.starts_with("prom/prometheus:")))
        .expect("a Prometheus service");
    let config_file =
        prometheus.command().iter().find_map(|a| a.strip_prefix("--config.file=")).expect("--config.file").to_string();
    assert_eq!(prometheus.host_file(&config_file), deploy.join("compose/prometheus.yml").canonicalize().unwrap());
    let prom = other("compose/prometheus.yml");
    let rules: Vec<PathBuf> =
        prom["rule_files"].as_array().unwrap().iter().map(|r| prometheus.host_file(r.as_str().unwrap())).collect();
    assert_eq!(rules, vec![deploy.join("prometheus/alerts.yml").canonicalize().unwrap()], "the alert rules");
    let jobs = prom["scrape_configs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert!(job["job_name"].as_str().unwrap().contains("psbroker"), "the alerts select a job named *psbroker*");
    assert_eq!(job["metrics_path"].as_str().unwrap_or("/metrics"), "/metrics");
    let targets: BTreeSet<String> = job["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(targets, scrape_targets, "Prometheus scrapes every node's port");
    // The token: made by a one-shot service on the shared store, in a volume both mount.
    assert_eq!(job["authorization"]["type"].as_str().unwrap_or("Bearer"), "Bearer");
    let credentials = job["authorization"]["credentials_file"].as_str().expect("a token for /metrics");
    let token_volume = prometheus.mount_of(credentials);
    assert!(token_volume.named() && token_volume.read_only, "the token comes in a volume, read-only");
    let token_file = Path::new(credentials).strip_prefix(&token_volume.target).unwrap();
    let maker = services
        .iter()
        .find(|s| s.psbroker_image() && s.mounts().iter().any(|m| m.source == token_volume.source && !m.read_only))
        .expect("a service that writes the scrape token");
    let script = maker.command().join(" ");
    let written = Path::new(&maker.mounts().into_iter().find(|m| m.source == token_volume.source).unwrap().target)
        .join(token_file);
    assert!(
        script.contains(&format!("f={}", written.display())),
        "{}: writes {}: {script}",
        maker.name,
        written.display()
    );
    assert!(script.contains("psbroker token create") && script.contains("--role read-only"), "{script}");
    let (_, maker_config) = maker.config();
    assert_eq!(
        maker_config.store.url,
        nodes.iter().map(|n| n.config().1.store.url).next().unwrap(),
        "the token is in the nodes' store"
    );
    assert_eq!(prometheus.depends_on(maker.name), Some("service_completed_successfully"));
    // And Prometheus itself accepts the file, with the container's paths pointing at what is
    // mounted there (the token: any file, as the volume would hold).
    let promtool = common::tools::require("promtool", "PSBROKER_PROMTOOL", "prometheus");
    let scratch = tempfile::tempdir().unwrap();
    let token = scratch.path().join("token");
    std::fs::write(&token, "psb_placeholder\n").unwrap();
    let mut text = std::fs::read_to_string(deploy.join("compose/prometheus.yml")).unwrap();
    for rule in prom["rule_files"].as_array().unwrap() {
        let rule = rule.as_str().unwrap();
        text = text.replace(rule, prometheus.host_file(rule).to_str().unwrap());
    }
    text = text.replace(credentials, token.to_str().unwrap());
    let checked = scratch.path().join("prometheus.yml");
    std::fs::write(&checked, text).unwrap();
    common::tools::run_ok(Command::new(promtool).args(["check", "config"]).arg(&checked), "promtool check config");

    // Grafana: the Prometheus service as data source, the dashboard provisioned from the repository.
    let grafana = services
        .iter()
        .find(|s| s.spec["image"].as_str().is_some_and(|i| i.starts_with("grafana/grafana:")))
        .expect("a Grafana service");
    let datasource = &other("compose/grafana/datasources.yml")["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    let prometheus_port = port_of(prometheus.spec["ports"][0].as_str().unwrap());
    assert_eq!(url_host_port(datasource["url"].as_str().unwrap()), (prometheus.name.to_string(), prometheus_port));
    let dashboards = other("compose/grafana/dashboards.yml")["providers"][0]["options"]["path"].as_str().unwrap();
    assert_eq!(
        grafana.host_file(&format!("{dashboards}/psbroker.json")),
        deploy.join("grafana/psbroker.json").canonicalize().unwrap()
    );
    for (kind, file) in [("datasources", "datasources.yml"), ("dashboards", "dashboards.yml")] {
        let provisioned = grafana
            .mounts()
            .into_iter()
            .find(|m| m.target.starts_with(&format!("/etc/grafana/provisioning/{kind}/")))
            .unwrap_or_else(|| panic!("grafana: nothing provisions {kind}"));
        assert_eq!(provisioned.source, format!("./compose/grafana/{file}"));
    }
}

/// The schema check is not vacuous: a misspelt key and a wrong type are refused.
#[test]
fn compose_schema_refuses_what_compose_refuses() {
    let text = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (from, to, said) in [
        ("    restart: unless-stopped\n", "    restarts: unless-stopped\n", "restarts"),
        ("        condition: service_healthy\n", "        condition: service_ready\n", "service_ready"),
    ] {
        assert!(text.contains(from), "compose.yaml has {from:?}");
        let broken = dir.path().join("compose.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (report, ok) = validate_compose(&broken, &[]);
        let errors = report["errors"].to_string();
        assert!(!ok && errors.contains(said), "{to:?} must be refused: {errors}");
    }
}
