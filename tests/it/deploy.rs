//! The Kubernetes manifests (deploy/kubernetes): every object the base and
//! the overlays list parses, has no field the Kubernetes API does not know
//! (each is read into its k8s-openapi type, v1.32, and must come back out
//! unchanged: a misspelt or misplaced field is dropped on the way and shows),
//! and keeps the invariants the design depends on. The configs in the
//! ConfigMaps load with nodens' own config loader. Where `kubectl` is
//! installed, `kubectl kustomize` must render each overlay too.
//!
//! These run under plain `cargo test`, with no tool but Rust. The authority on
//! the manifests is deploy/validate.sh, run by .ci/run: it renders each overlay
//! with `kubectl kustomize` and validates every object with kubernetes-validate
//! --strict against the current Kubernetes schemas, and checks the Prometheus
//! rules with promtool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The objects a kustomization lists (recursively through directories).
fn load(dir: &Path) -> Vec<Value> {
    let k = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut out = Vec::new();
    for r in k["resources"].as_array().expect("resources") {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            out.extend(load(&path));
        } else {
            out.extend(yaml_docs(&path));
        }
    }
    out
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Reads `o` into its API type and back; it must not change.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(o: &Value) {
    let typed: T = serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{}: {e}", key(o)));
    let back = serde_json::to_value(typed).unwrap();
    if let Some(path) = first_difference(o, &back, String::new()) {
        panic!(
            "{}: field {path} is not part of the Kubernetes API (or has the wrong type)",
            key(o)
        );
    }
}

fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, v)| match y.get(k) {
            Some(w) => first_difference(v, w, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(at),
    }
}

fn check_schema(o: &Value) {
    use k8s_openapi::api;
    match o["kind"].as_str().unwrap() {
        "DaemonSet" => roundtrip::<api::apps::v1::DaemonSet>(o),
        "Deployment" => roundtrip::<api::apps::v1::Deployment>(o),
        "Service" => roundtrip::<api::core::v1::Service>(o),
        "ServiceAccount" => roundtrip::<api::core::v1::ServiceAccount>(o),
        "ConfigMap" => roundtrip::<api::core::v1::ConfigMap>(o),
        "Pod" => roundtrip::<api::core::v1::Pod>(o),
        "ClusterRole" => roundtrip::<api::rbac::v1::ClusterRole>(o),
        "ClusterRoleBinding" => roundtrip::<api::rbac::v1::ClusterRoleBinding>(o),
        "PodDisruptionBudget" => roundtrip::<api::policy::v1::PodDisruptionBudget>(o),
        "NetworkPolicy" => roundtrip::<api::networking::v1::NetworkPolicy>(o),
        other => panic!("{}: kind {other} has no schema check here; add one", key(o)),
    }
}

fn by_key(objects: &[Value]) -> BTreeMap<String, &Value> {
    objects.iter().map(|o| (key(o), o)).collect()
}

#[test]
fn base_objects_are_valid_and_keep_the_invariants() {
    let objects = load(&root().join("base"));
    let all = by_key(&objects);
    assert_eq!(all.len(), objects.len(), "duplicate objects");
    for o in &objects {
        check_schema(o);
    }

    // The node agent.
    let ds = all["DaemonSet/nodens"];
    let spec = &ds["spec"]["template"]["spec"];
    let roll = &ds["spec"]["updateStrategy"];
    assert_eq!(roll["type"], "RollingUpdate");
    assert_eq!(
        roll["rollingUpdate"]["maxSurge"], 1,
        "the new agent starts beside the old one"
    );
    assert_eq!(
        roll["rollingUpdate"]["maxUnavailable"], 0,
        "never a node without an agent"
    );
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "Default");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "all taints tolerated"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    // hostPorts (what ports become with hostNetwork) would keep the surge pod off the node.
    assert!(c.get("ports").is_none(), "the agent must declare no ports");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_BIND_SERVICE", "NET_ADMIN"])
    );
    for what in ["requests", "limits"] {
        assert!(c["resources"][what]["memory"].is_string(), "memory {what}");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert_eq!(
        c["readinessProbe"]["exec"]["command"],
        serde_json::json!(["/usr/local/bin/nodens", "probe", "ready"])
    );
    assert_eq!(
        c["livenessProbe"]["exec"]["command"],
        serde_json::json!(["/usr/local/bin/nodens", "probe", "live"])
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--setup-interface"), "{args:?}");

    // Its config loads, and probes find this pod's own process.
    let toml = all["ConfigMap/nodens"]["data"]["nodens.toml"].as_str().unwrap();
    let config = nodens::config::Config::from_toml(toml, "ConfigMap nodens").expect("agent config loads");
    assert_eq!(config.listen, vec!["169.254.20.10:53".parse().unwrap()]);
    assert_eq!(config.cluster.source, nodens::config::SourceKind::Hub);
    assert!(!config.cluster.hub.is_empty());
    assert!(config.node.setup_interface);
    assert_eq!(
        config.node.addresses,
        vec!["169.254.20.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let probe_file = config.node.probe_file.clone().expect("probe_file set");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let run = mounts
        .iter()
        .find(|m| probe_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("probe_file on a mount");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == run["name"])
        .unwrap();
    assert!(
        volume.get("emptyDir").is_some(),
        "probe_file must be in the pod's own emptyDir"
    );
    assert_eq!(
        config.workers, 0,
        "old and new agents must run as many workers (node::handover)"
    );

    // The hub's Service address is the one agents are given.
    let svc = all["Service/nodens-hub"];
    let hub = config.cluster.hub[0];
    assert_eq!(svc["spec"]["clusterIP"], hub.ip().to_string());
    assert_eq!(svc["spec"]["ports"][0]["port"], hub.port());
    assert_eq!(all["ServiceAccount/nodens"]["automountServiceAccountToken"], false);

    // The hub: no node agent has API rights; the hub has list/watch on two resources.
    let bindings: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"].as_str().unwrap().ends_with("Binding"))
        .collect();
    for b in &bindings {
        for s in b["subjects"].as_array().unwrap() {
            assert_ne!(
                s["name"], "nodens",
                "the node agent's account must not be bound to any role"
            );
        }
    }
    let role = all["ClusterRole/nodens-hub"];
    let mut granted: Vec<(String, String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().into())
                .collect();
            let groups: Vec<String> = r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().into())
                .collect();
            let resources: Vec<String> = r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().into())
                .collect();
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources
                    .clone()
                    .into_iter()
                    .map(move |res| (g.clone(), res, verbs.clone()))
            })
        })
        .collect();
    granted.sort();
    let lw = vec!["list".to_string(), "watch".to_string()];
    assert_eq!(
        granted,
        vec![
            ("".into(), "services".into(), lw.clone()),
            ("discovery.k8s.io".into(), "endpointslices".into(), lw.clone()),
        ],
        "the hub may list and watch services and endpointslices, nothing else"
    );
    let binding = all["ClusterRoleBinding/nodens-hub"];
    assert_eq!(binding["roleRef"]["name"], "nodens-hub");
    assert_eq!(binding["subjects"][0]["name"], "nodens-hub");

    let dep = all["Deployment/nodens-hub"];
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert!(
        pod["affinity"]["podAntiAffinity"].is_object(),
        "replicas spread over nodes"
    );
    assert_eq!(pod["serviceAccountName"], "nodens-hub");
    assert_eq!(
        pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    let hub_toml = all["ConfigMap/nodens-hub"]["data"]["hub.toml"].as_str().unwrap();
    let hub_config = nodens::config::Config::from_toml(hub_toml, "ConfigMap nodens-hub").expect("hub config loads");
    assert_eq!(hub_config.hub.listen.port(), hub.port());
    assert_eq!(all["PodDisruptionBudget/nodens-hub"]["spec"]["minAvailable"], 1);
    let np = all["NetworkPolicy/nodens-hub"];
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let from = &np["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"];
    let node_cidr: ipnet::IpNet = from.as_str().unwrap().parse().unwrap();
    assert!(
        config.allow.contains(&node_cidr),
        "the hub admits the node CIDR the agents allow"
    );
}

#[test]
fn overlays_render_and_the_example_pod_uses_the_agent() {
    for overlay in ["dnsconfig", "kubelet-cluster-dns"] {
        let objects = load(&root().join("overlays").join(overlay));
        for o in &objects {
            check_schema(o);
        }
        assert!(
            by_key(&objects).contains_key("DaemonSet/nodens"),
            "{overlay} includes the base"
        );
    }
    let objects = load(&root().join("overlays/dnsconfig"));
    let pod = by_key(&objects)["Pod/nodens-example"];
    let dns = &pod["spec"]["dnsConfig"];
    assert_eq!(pod["spec"]["dnsPolicy"], "None");
    assert_eq!(dns["nameservers"][0], "169.254.20.10");
    assert_eq!(
        dns["searches"],
        serde_json::json!(["default.svc.cluster.local", "svc.cluster.local", "cluster.local"])
    );
    assert_eq!(dns["options"], serde_json::json!([{"name": "ndots", "value": "5"}]));
    let kubelet = &yaml_docs(&root().join("overlays/kubelet-cluster-dns/kubelet-config.yaml"))[0];
    assert_eq!(kubelet["kind"], "KubeletConfiguration");
    assert_eq!(kubelet["clusterDNS"][0], "169.254.20.10");
}

#[test]
fn kubectl_kustomize_renders_each_overlay() {
    let runs = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        eprintln!(
            "SKIPPED: kubectl is not installed; the manifests were checked by the other deploy tests \
             (CI's deploy/validate.sh renders and validates them)"
        );
        return;
    }
    for overlay in ["dnsconfig", "kubelet-cluster-dns"] {
        let dir = root().join("overlays").join(overlay);
        let out = std::process::Command::new("kubectl")
            // Rendering only: no cluster configured, whatever the machine has.
            .env("KUBECONFIG", "/dev/null")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let rendered: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        for o in &rendered {
            check_schema(o);
        }
        assert_eq!(
            rendered.len(),
            load(&dir).len(),
            "{overlay}: kubectl and the test see different objects"
        );
        let ds = rendered.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
        assert_eq!(ds["metadata"]["namespace"], "kube-system");
        assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], "nodens:0.1.0");
    }
}
