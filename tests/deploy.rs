//! The operations kit in `deploy/`, checked by real tools: the alert rules
//! with `promtool test rules`, the Grafana dashboard's PromQL with
//! `promtool check rules`, the Kubernetes manifests against Kubernetes'
//! JSON schemas (`kubernetes-validate --strict`), and the manifests and the
//! dashboard against Herald itself (its config check, the ports and probe
//! paths it serves, the metric names it registers).
//!
//! Tools: `promtool` (Debian's `prometheus` package) from `HERALD_PROMTOOL`
//! or `PATH`; `kubernetes-validate` and PyYAML from the venv
//! `HERALD_DEPLOY_VENV` (default `target/deploy-venv`). `scripts/test.sh`
//! installs both when missing. No Kafka needed.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Series the dashboard or the alerts read that Herald does not export, and
/// who does: each is named in the file that reads it.
const EXTERNAL_METRICS: &[&str] = &[
    // Prometheus itself, per target.
    "up",
    // The kubelet's cAdvisor on Kubernetes (the dashboard's pod variable).
    "container_memory_working_set_bytes",
    // The prometheus crate's process collector, which src/metrics.rs
    // registers (the dashboard's Process row).
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_PROMTOOL") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .expect("promtool not on PATH: scripts/test.sh installs Debian's prometheus package")
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("HERALD_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| path("target/deploy-venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.is_file(),
        "{} missing: scripts/test.sh makes the venv from tests/deploy/requirements.txt",
        bin.display()
    );
    bin
}

/// Runs a command, panicking with its output unless it exits 0.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh directory of this test's own under target/.
fn scratch(name: &str) -> PathBuf {
    let dir = path("target/deploy-test").join(name);
    _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every document of a YAML file, as JSON (read by PyYAML).
fn yaml(rel: &str) -> Vec<Value> {
    let out = run(Command::new(venv_bin("python")).args([
        "-c",
        "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        path(rel).to_str().unwrap(),
    ]));
    serde_json::from_str(&out).unwrap()
}

/// Metric names registered in src/metrics.rs, with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn herald_metrics() -> HashSet<String> {
    let src = std::fs::read_to_string(path("src/metrics.rs")).unwrap();
    let re = regex::Regex::new(r#""(herald_[a-z0-9_]+)""#).unwrap();
    let mut names = HashSet::new();
    for m in re.captures_iter(&src) {
        let name = m.get(1).unwrap();
        names.insert(name.as_str().to_owned());
        let before = &src[name.start().saturating_sub(200)..name.start()];
        if before.contains("Histogram") {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", name.as_str()));
            }
        }
    }
    assert!(names.contains("herald_delivery_latency_seconds_bucket"));
    names
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, keywords, label names or inside strings, matchers or ranges.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = regex::Regex::new(r#""(\\.|[^"\\])*"|'(\\.|[^'\\])*'"#).unwrap();
    let braces = regex::Regex::new(r"\{[^}]*\}|\[[^\]]*\]").unwrap();
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    let expr = strings.replace_all(expr, "\"\"");
    let expr = braces.replace_all(&expr, " ");
    let expr = grouping.replace_all(&expr, " ");
    let keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "Inf",
        "NaN",
        "inf",
        "nan",
    ];
    let mut names = BTreeSet::new();
    for m in ident.find_iter(&expr) {
        let prev = expr[..m.start()].chars().last();
        let next = expr[m.end()..].trim_start().chars().next();
        let number = prev.is_some_and(|c| c.is_ascii_digit() || c == '.');
        if next == Some('(') || number || keywords.contains(&m.as_str()) {
            continue;
        }
        names.insert(m.as_str().to_owned());
    }
    names
}

#[test]
fn metric_names_finds_selectors_only() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{code=~"x|y",le!="1"}[5m]))) / on (job) group_left b > 1e3 and c offset 5m"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c"].map(String::from).into());
}

fn assert_known(names: impl IntoIterator<Item = String>, what: &str) {
    let known = herald_metrics();
    for name in names {
        assert!(
            known.contains(&name) || EXTERNAL_METRICS.contains(&name.as_str()),
            "{what} reads {name}, which src/metrics.rs does not register"
        );
    }
}

/// Grafana's variables replaced by values PromQL parses.
fn without_grafana_variables(expr: &str) -> String {
    let var = regex::Regex::new(r"\$\{?(\w+)\}?").unwrap();
    var.replace_all(expr, |c: &regex::Captures| match &c[1] {
        "__rate_interval" | "__interval" => "5m".to_owned(),
        "__range" => "1h".to_owned(),
        _ => ".*".to_owned(),
    })
    .into_owned()
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(path("deploy/prometheus/alerts.yml")));
    run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(path("deploy/prometheus/alerts_test.yml")));
    // The compose stack's Prometheus config, which loads the rules.
    run(Command::new(promtool())
        .args(["check", "config"])
        .arg(path("deploy/prometheus/prometheus.yml")));

    let rules = &yaml("deploy/prometheus/alerts.yml")[0];
    let mut alerts = Vec::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        assert_known(metric_names(rule["expr"].as_str().unwrap()), name);
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name} has no severity"
        );
        alerts.push(name.to_owned());
    }
    // Every alert has at least one case in the tests that expects it to
    // fire and one that expects it quiet.
    let tests = &yaml("deploy/prometheus/alerts_test.yml")[0];
    for name in &alerts {
        let cases: Vec<&Value> = tests["tests"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
            .filter(|c| c["alertname"] == name.as_str())
            .collect();
        let fires = cases
            .iter()
            .any(|c| !c["exp_alerts"].as_array().unwrap().is_empty());
        let quiet = cases.iter().any(|c| {
            let exp = c["exp_alerts"].as_array().unwrap();
            exp.is_empty() || exp.iter().all(|a| a["exp_labels"]["instance"] == "a")
        });
        assert!(
            fires && quiet,
            "{name}: alerts_test.yml needs a case that fires and one that stays quiet"
        );
    }
}

#[test]
fn dashboard_is_stable_schema_with_promql_that_parses_and_herald_metrics() {
    let text = std::fs::read_to_string(path("deploy/grafana/herald.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("herald.json is JSON");
    assert_eq!(dash["uid"], "herald");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let mut exprs: Vec<(String, String)> = Vec::new();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    for wanted in ["datasource", "instance"] {
        assert!(names.contains(&wanted), "no ${wanted} variable");
    }
    let label_values = regex::Regex::new(r"^label_values\((.+),\s*\w+\)$").unwrap();
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let query = var["query"]["query"].as_str().unwrap();
        let selector = &label_values.captures(query).expect("label_values(…)")[1];
        exprs.push((format!("variable {}", var["name"]), selector.to_owned()));
    }

    let mut ids = HashSet::new();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() > 10);
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id twice"
        );
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {pos}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{title}: target datasource"
            );
            let expr = target["expr"].as_str().expect("expr");
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    for want in [
        "herald_connections",
        "herald_messages_delivered_total",
        "herald_delivery_latency_seconds_bucket",
        "herald_partition_lag",
        "herald_messages_consumed_total",
        "herald_unrouted_records_total",
        "herald_slow_client_disconnects_total",
        "herald_replay_records_total",
        "herald_http_errors_total",
        "herald_push_sent_total",
    ] {
        assert!(
            exprs.iter().any(|(_, e)| metric_names(e).contains(want)),
            "no panel shows {want}"
        );
    }
    assert!(panels.iter().any(|p| p["type"] == "heatmap"));

    // Every expression as a recording rule, for promtool to parse.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        assert_known(metric_names(expr), title);
        let expr = serde_json::to_string(&without_grafana_variables(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {expr}\n"
        ));
    }
    let file = scratch("dashboard").join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    run(Command::new(promtool()).args(["check", "rules"]).arg(&file));
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(path("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 6, "{manifests:?}");
    // The oldest and newest Kubernetes kubernetes-validate carries schemas
    // for; --strict refuses fields a schema does not have.
    for version in ["1.25.0", "1.37.0"] {
        run(Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(&manifests));
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn kubernetes_manifests_agree_with_the_config() {
    let docs: Vec<Value> = ["configmap", "secret", "deployment", "service", "pdb", "hpa"]
        .iter()
        .flat_map(|f| yaml(&format!("deploy/k8s/{f}.yaml")))
        .collect();
    let toml_text = find(&docs, "ConfigMap")["data"]["herald.toml"]
        .as_str()
        .unwrap();
    let config: toml::Value = toml::from_str(toml_text).unwrap();
    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The config passes `herald check`, with the Secret's files where the
    // config expects the Secret mounted.
    let dir = scratch("k8s");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        let name = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v[volume].is_object())
            .unwrap_or_else(|| panic!("no {volume} volume"))["name"]
            .clone();
        mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let secrets_dir = mount_of("secret");
    for (file, value) in find(&docs, "Secret")["stringData"].as_object().unwrap() {
        std::fs::write(dir.join(file), value.as_str().unwrap()).unwrap();
    }
    let secret_file = config["auth"]["hmac_secret_file"].as_str().unwrap();
    assert!(
        secret_file.starts_with(&format!("{secrets_dir}/")),
        "{secret_file}"
    );
    let local = toml_text.replace(&format!("{secrets_dir}/"), &format!("{}/", dir.display()));
    std::fs::write(dir.join("herald.toml"), local).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check", "--config"])
        .arg(dir.join("herald.toml")));

    // Herald is started on the mounted ConfigMap.
    let config_path = format!("{}/herald.toml", mount_of("configMap"));
    let command: Vec<&str> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().unwrap())
        .map(|v| v.as_str().unwrap())
        .collect();
    let command = command.join(" ");
    assert!(
        command.contains(&format!("exec herald serve --config {config_path}")),
        "{command}"
    );

    // Ports and probes: the client port and the admin listener's.
    let ports = container["ports"].as_array().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let http = &config["http"];
    assert_eq!(port("http"), port_of(http["listen"].as_str().unwrap()));
    assert_eq!(
        port("admin"),
        port_of(http["admin_listen"].as_str().unwrap())
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "admin", "{probe}: on the admin listener");
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port("admin").to_string());

    // The kubelet waits for preStop, the drain and the producer's 5 s flush.
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap();
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let grace = humantime::parse_duration(http["shutdown_grace"].as_str().unwrap()).unwrap();
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        period >= pre_stop + grace.as_secs() + 5,
        "terminationGracePeriodSeconds {period} < preStop {pre_stop} + shutdown_grace {grace:?} + 5"
    );

    // The Service, PDB and HPA select and target these pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let service = find(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["sessionAffinity"], "None");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        &find(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    let target = &find(&docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert!(container["resources"]["requests"]["cpu"].is_string());
}

#[test]
fn compose_mounts_files_that_exist() {
    let compose = &yaml("docker-compose.yml")[0];
    for (name, service) in compose["services"].as_object().unwrap() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(
                    path(host).exists(),
                    "{name} mounts {host}, which is missing"
                );
            }
        }
    }
    for service in ["prometheus", "grafana"] {
        assert!(
            compose["services"][service].is_object(),
            "no {service} in docker-compose.yml"
        );
    }
}
