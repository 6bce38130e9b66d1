//! Deployment artifacts: the Kubernetes manifests in `deploy/k8s` and the Dockerfile.
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
