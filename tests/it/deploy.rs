//! The deployment files under `deploy/` checked against the code they deploy:
//! no container engine runs here, so these tests read `deploy/compose.yaml`
//! and `deploy/Dockerfile` and check every cross-reference a typo would
//! break: commands parse with the real CLI, environment variables are loaded
//! through the real configuration loader (unknown keys and bad values are
//! errors there), and ports, credentials and grace periods agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::own_process::in_own_process;
use clap::Parser;
use secrecy::ExposeSecret;
use serde_yaml_ng::Value;
use zhima_worker::cli::Cli;
use zhima_worker::config::{self, Settings};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/compose.yaml")).unwrap();
    let mut value: Value = serde_yaml_ng::from_str(&text).unwrap();
    value.apply_merge().unwrap();
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

/// Services that run our image (the others are RabbitMQ and PostgreSQL).
fn ours(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, service)| service["image"].as_str() == Some("zhima-worker:local"))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {value:?}"))
        .iter()
        .map(|item| item.as_str().unwrap().to_owned())
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(map) = service["environment"].as_mapping() else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(key, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{key:?}: quote environment values in compose"));
            (key.as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

/// Loads the settings a container would see: the built-in defaults plus the
/// service's environment, through the real loader. Only inside
/// `in_own_process`: the `Jail` swaps the whole process's environment.
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
fn settings_of(service_name: &str, service: &Value) -> Settings {
    let env = environment(service);
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in &env {
            jail.set_env(key, value);
        }
        match config::load(None) {
            Ok(settings) => loaded = Some(settings),
            Err(error) => panic!("service {service_name}: its environment is refused: {error}"),
        }
        Ok(())
    });
    loaded.unwrap()
}

fn host_and_port(url: &str) -> (String, u16) {
    let url = url::Url::parse(url).unwrap();
    (
        url.host_str().unwrap().to_owned(),
        url.port_or_known_default().unwrap(),
    )
}

fn published_or_exposed_ports(service: &Value) -> Vec<u16> {
    let mut ports = Vec::new();
    for key in ["ports", "expose"] {
        if service[key].is_null() {
            continue;
        }
        for entry in strings(&service[key]) {
            let container = entry.rsplit(':').next().unwrap();
            ports.push(container.parse().unwrap());
        }
    }
    ports
}

#[test]
fn compose_runs_two_worker_replicas_beside_the_broker_database_and_sandbox() {
    let compose = compose();
    let services = services(&compose);
    for name in ["rabbitmq", "postgres", "sandbox", "worker", "migrate"] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
    assert_eq!(services["worker"]["deploy"]["replicas"].as_u64(), Some(2));
}

#[test]
fn every_compose_command_parses_with_the_real_cli() {
    let compose = compose();
    for (name, service) in ours(&compose) {
        let mut argv = vec!["zhima-worker".to_owned()];
        argv.extend(strings(&service["command"]));
        if let Err(error) = Cli::try_parse_from(&argv) {
            panic!(
                "service {name}: `{}` does not parse: {error}",
                argv.join(" ")
            );
        }
    }
}

#[test]
fn every_compose_environment_is_accepted_by_the_configuration_loader() {
    in_own_process(|| {
        let compose = compose();
        let ours = ours(&compose);
        assert!(ours.len() >= 3, "sandbox, migrate and worker run our image");
        for (name, service) in &ours {
            for key in environment(service).keys() {
                assert!(
                    key.starts_with("ZHIMA__") && key.matches("__").count() == 2,
                    "service {name}: {key} is not a ZHIMA__SECTION__KEY variable"
                );
            }
            settings_of(name, service);
        }
    });
}

#[test]
fn the_workers_reach_the_broker_database_and_sandbox_where_compose_puts_them() {
    in_own_process(|| {
        let compose = compose();
        let services = services(&compose);
        let settings = settings_of("worker", &services["worker"]);

        let amqp = url::Url::parse(settings.amqp.url.expose_secret()).unwrap();
        let rabbit_env = environment(&services["rabbitmq"]);
        assert_eq!(host_and_port(amqp.as_str()), ("rabbitmq".into(), 5672));
        assert!(published_or_exposed_ports(&services["rabbitmq"]).contains(&5672));
        assert_eq!(amqp.username(), rabbit_env["RABBITMQ_DEFAULT_USER"]);
        assert_eq!(
            amqp.password(),
            Some(rabbit_env["RABBITMQ_DEFAULT_PASS"].as_str())
        );

        let database = url::Url::parse(settings.database.url.expose_secret()).unwrap();
        let pg_env = environment(&services["postgres"]);
        assert_eq!(host_and_port(database.as_str()), ("postgres".into(), 5432));
        assert!(published_or_exposed_ports(&services["postgres"]).contains(&5432));
        assert_eq!(database.username(), pg_env["POSTGRES_USER"]);
        assert_eq!(
            database.password(),
            Some(pg_env["POSTGRES_PASSWORD"].as_str())
        );
        assert_eq!(database.path(), format!("/{}", pg_env["POSTGRES_DB"]));

        let (gateway_host, gateway_port) = host_and_port(settings.upstream.gateway_url.as_str());
        assert_eq!(gateway_host, "sandbox");
        let sandbox_command = strings(&services["sandbox"]["command"]);
        let listen = sandbox_command
            .iter()
            .skip_while(|arg| *arg != "--listen")
            .nth(1)
            .expect("the sandbox is given --listen");
        assert!(
            listen.ends_with(&format!(":{gateway_port}")),
            "sandbox listens on {listen}"
        );
        assert!(published_or_exposed_ports(&services["sandbox"]).contains(&gateway_port));

        let metrics_port: u16 = settings
            .http
            .listen
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(published_or_exposed_ports(&services["worker"]).contains(&metrics_port));
    });
}

#[test]
fn compose_gives_workers_more_time_to_stop_than_their_shutdown_grace() {
    in_own_process(|| {
        let compose = compose();
        let services = services(&compose);
        let settings = settings_of("worker", &services["worker"]);
        let grace = services["worker"]["stop_grace_period"].as_str().unwrap();
        let seconds: u64 = grace.strip_suffix('s').unwrap().parse().unwrap();
        assert!(
            seconds > settings.worker.shutdown_grace_s,
            "stop_grace_period {seconds}s must exceed worker.shutdown_grace_s {}",
            settings.worker.shutdown_grace_s
        );
    });
}

#[test]
fn the_dockerfile_builds_with_the_crate_rust_version_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo_file("deploy/Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(repo_file("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        dockerfile.contains(&format!("FROM rust:{rust_version}-")),
        "the builder image must be rust:{rust_version}"
    );
    let user = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    assert_ne!(user.trim(), "root");
    assert_ne!(user.trim(), "0");
    let compose = compose();
    assert_eq!(
        compose["x-worker"]["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
}

/// The mount target of `volume` in `service`, if it mounts it.
fn mount_of(service: &Value, volume: &str) -> Option<String> {
    strings(&service["volumes"]).into_iter().find_map(|entry| {
        let mut parts = entry.split(':');
        (parts.next() == Some(volume)).then(|| parts.next().unwrap().to_owned())
    })
}

#[test]
fn every_replica_reads_the_one_pii_key_the_pii_key_service_makes() {
    in_own_process(|| {
        let compose = compose();
        let services = services(&compose);
        let settings = settings_of("worker", &services["worker"]);
        let key_path = settings.pii.hmac_key_path.display().to_string();
        let (key_dir, key_file) = key_path.rsplit_once('/').unwrap();
        let maker = &services["pii-key"];
        let made_in = mount_of(maker, "pii-key").expect("pii-key mounts the volume");
        let script = strings(&maker["command"]).join(" ");
        assert!(
            script.contains(&format!("{made_in}/{key_file}")),
            "the pii-key service must write {made_in}/{key_file}: {script}"
        );
        assert!(compose["volumes"]["pii-key"].is_mapping(), "a named volume");
        assert_eq!(
            mount_of(&services["worker"], "pii-key").as_deref(),
            Some(key_dir),
            "the workers must mount the key's volume at {key_dir}"
        );
        assert_eq!(
            services["worker"]["depends_on"]["pii-key"]["condition"].as_str(),
            Some("service_completed_successfully")
        );
    });
}

// ---- Prometheus rules, Grafana dashboard, systemd unit, Kubernetes ----

/// `name` on PATH. Missing: a failure under CI (`.ci/run` sets CI and
/// installs it with `scripts/ensure-services.sh tools`), a notice and a
/// skip on a developer's machine.
fn required_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let hint = format!("{name} is missing: run scripts/ensure-services.sh tools");
        assert!(std::env::var_os("CI").is_none(), "{hint}");
        eprintln!("SKIPPED (not CI): {hint}");
    }
    found
}

fn run_tool(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every metric name `src/telemetry/metric.rs` defines.
fn defined_metrics() -> std::collections::BTreeSet<String> {
    let source = std::fs::read_to_string(repo_file("src/telemetry/metric.rs")).unwrap();
    source
        .lines()
        .filter_map(|line| line.split_once("= \"zhima_"))
        .map(|(_, rest)| format!("zhima_{}", rest.trim_end_matches("\";")))
        .collect()
}

/// The `zhima_*` series a PromQL expression reads, histogram suffixes
/// folded into their metric.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("zhima_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        found.push(base.to_owned());
        rest = &tail[end..];
    }
    found
}

fn alert_rules() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let rules: Value = serde_yaml_ng::from_str(&text).unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap().clone())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = required_tool("promtool") else {
        return;
    };
    let dir = repo_file("deploy/prometheus");
    let (ok, text) = run_tool(&promtool, &["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "promtool check rules:\n{text}");
    let (ok, text) = run_tool(&promtool, &["test", "rules", "alerts_test.yml"], &dir);
    assert!(ok, "promtool test rules:\n{text}");
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let tested: std::collections::BTreeSet<&str> = tests
        .lines()
        .filter_map(|line| line.trim().strip_prefix("alertname: "))
        .collect();
    assert!(
        tested.len() >= 3,
        "unit tests for at least three alerts: {tested:?}"
    );
}

#[test]
fn the_alerts_cover_the_issue_and_read_only_metrics_the_worker_exports() {
    let defined = defined_metrics();
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "ZhimaConsumptionPaused",
        "ZhimaDeadQueueGrowing",
        "ZhimaNoProgress",
        "ZhimaRateLimitThrottled",
        "ZhimaReplicasBelowExpected",
        "ZhimaCertificateExpiringSoon",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    for rule in &rules {
        let expr = rule["expr"].as_str().unwrap();
        let used = metrics_in(expr);
        assert!(!used.is_empty(), "{expr}");
        for metric in used {
            assert!(
                defined.contains(&metric),
                "{:?}: {metric} is not in src/telemetry/metric.rs",
                rule["alert"]
            );
        }
    }
}

#[test]
fn every_dashboard_panel_reads_metrics_the_worker_exports() {
    let defined = defined_metrics();
    let text = std::fs::read_to_string(repo_file("deploy/grafana/zhima-worker.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut seen = std::collections::BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in metrics_in(expr) {
                assert!(
                    defined.contains(&metric),
                    "panel {}: {metric} is not in src/telemetry/metric.rs",
                    panel["title"]
                );
                seen.insert(metric);
            }
        }
    }
    for metric in &defined {
        assert!(seen.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn the_readme_names_every_metric_the_worker_exports() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    for metric in defined_metrics() {
        assert!(
            readme.contains(&format!("`{metric}")),
            "README lacks {metric}"
        );
    }
}

/// `Key=value` lines of a unit file's sections, in order.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn unit_value<'a>(entries: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

const UNIT: &str = "deploy/systemd/zhima-worker.service";

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = required_tool("systemd-analyze") else {
        return;
    };
    let text = std::fs::read_to_string(repo_file(UNIT)).unwrap();
    // verify checks that ExecStart's program exists: point it at the build.
    let text = text.replace(
        "ExecStart=/usr/local/bin/zhima-worker",
        &format!("ExecStart={}", crate::support::BIN),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zhima-worker.service");
    std::fs::write(&path, text).unwrap();
    let (ok, output) = run_tool(&analyze, &["verify", path.to_str().unwrap()], dir.path());
    // verify exits 0 on unknown keys and bad values, only printing them.
    let complaints: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("zhima-worker.service"))
        .collect();
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify:\n{output}"
    );
}

#[test]
fn the_systemd_unit_restarts_on_failure_outwaits_the_grace_and_runs_a_real_command() {
    let text = std::fs::read_to_string(repo_file(UNIT)).unwrap();
    let entries = unit_entries(&text);
    assert_eq!(unit_value(&entries, "Restart"), ["on-failure"]);
    let exec = unit_value(&entries, "ExecStart")[0];
    let argv: Vec<String> = std::iter::once("zhima-worker".to_owned())
        .chain(exec.split_whitespace().skip(1).map(str::to_owned))
        .collect();
    assert!(Cli::try_parse_from(&argv).is_ok(), "ExecStart {exec}");
    let env: BTreeMap<String, String> = unit_value(&entries, "Environment")
        .iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let stop: u64 = unit_value(&entries, "TimeoutStopSec")[0].parse().unwrap();
    in_own_process(|| {
        let settings = settings_from_env("systemd unit", &env);
        assert!(
            stop > settings.worker.shutdown_grace_s,
            "TimeoutStopSec {stop} must exceed worker.shutdown_grace_s {}",
            settings.worker.shutdown_grace_s
        );
    });
    for hardening in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "CapabilityBoundingSet",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
    ] {
        assert!(
            !unit_value(&entries, hardening).is_empty(),
            "{hardening} missing"
        );
    }
    assert_ne!(unit_value(&entries, "User"), ["root"]);
}

/// The settings a process with exactly `env` would load (defaults + env),
/// through the real loader. Only inside `in_own_process`.
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
fn settings_from_env(what: &str, env: &BTreeMap<String, String>) -> Settings {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in env {
            jail.set_env(key, value);
        }
        match config::load(None) {
            Ok(settings) => loaded = Some(settings),
            Err(error) => panic!("{what}: its environment is refused: {error}"),
        }
        Ok(())
    });
    loaded.unwrap()
}

/// Every document of every file under deploy/kubernetes, by kind.
fn kubernetes() -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(repo_file("deploy/kubernetes")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(document).unwrap();
            let kind = value["kind"].as_str().unwrap().to_owned();
            assert!(found.insert(kind.clone(), value).is_none(), "two {kind}s");
        }
    }
    found
}

/// What a Secret reference stands for in these tests: a value of the right shape.
fn sample_secret(key: &str) -> String {
    match key {
        "amqp-url" => "amqp://user:pass@rabbitmq:5672/%2f".into(),
        "database-url" => "postgres://user:pass@postgres:5432/zhima".into(),
        other => panic!("no sample for the secret key {other}"),
    }
}

/// A container's environment, Secret references replaced by samples; every
/// name must be a ZHIMA__SECTION__KEY variable.
fn container_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            assert!(
                name.starts_with("ZHIMA__") && name.matches("__").count() == 2,
                "{name} is not a ZHIMA__SECTION__KEY variable"
            );
            let value = match var["value"].as_str() {
                Some(value) => value.to_owned(),
                None => sample_secret(var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap()),
            };
            (name, value)
        })
        .collect()
}

fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

fn first_container(workload: &Value) -> &Value {
    &pod_spec(workload)["containers"][0]
}

fn assert_under_a_mount(container: &Value, path: &str, what: &str) {
    let mounted = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|mount| path.starts_with(&format!("{}/", mount["mountPath"].as_str().unwrap())));
    assert!(mounted, "{what} {path} is not under any volumeMount");
}

#[test]
fn the_deployment_probes_ports_grace_keys_and_user_agree_with_the_code() {
    let manifests = kubernetes();
    let deployment = &manifests["Deployment"];
    let pod = pod_spec(deployment);
    let container = first_container(deployment);
    let mut argv = vec!["zhima-worker".to_owned()];
    argv.extend(strings(&container["args"]));
    assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
    let env = container_env(container);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    let port_name = container["ports"][0]["name"].as_str().unwrap().to_owned();
    let health = std::fs::read_to_string(repo_file("src/health.rs")).unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some(port_name.as_str()), "{probe}");
        assert!(
            health.contains(&format!(".route(\"{path}\"")),
            "{path} is served"
        );
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    assert!(
        health.contains(".route(\n            \"/metrics\""),
        "/metrics is served"
    );
    let dockerfile = std::fs::read_to_string(repo_file("deploy/Dockerfile")).unwrap();
    let image_user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap();
    assert_eq!(
        pod["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string()),
        Some(image_user.trim().to_owned())
    );
    let items: Vec<String> = pod["volumes"][0]["secret"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|item| item["path"].as_str().unwrap().to_owned())
        .collect();
    in_own_process(|| {
        let settings = settings_from_env("Deployment", &env);
        assert!(
            grace > settings.worker.shutdown_grace_s,
            "terminationGracePeriodSeconds {grace} must exceed worker.shutdown_grace_s {}",
            settings.worker.shutdown_grace_s
        );
        let listen_port: u64 = settings
            .http
            .listen
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(listen_port, port, "http.listen serves the probed port");
        for (what, path) in [
            (
                "upstream.private_key_path",
                settings.upstream.private_key_path.clone(),
            ),
            (
                "upstream.alipay_public_key_path",
                settings.upstream.alipay_public_key_path.clone(),
            ),
            ("pii.hmac_key_path", settings.pii.hmac_key_path.clone()),
        ] {
            let path = path.display().to_string();
            assert_under_a_mount(container, &path, what);
            let file = path.rsplit('/').next().unwrap();
            assert!(
                items.iter().any(|item| item == file),
                "{what}: no Secret item {file}"
            );
        }
    });
}

#[test]
fn the_budget_scaler_and_cron_job_point_at_the_deployment_queue_and_cli() {
    let manifests = kubernetes();
    let deployment = &manifests["Deployment"];
    let name = deployment["metadata"]["name"].as_str().unwrap();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let budget = &manifests["PodDisruptionBudget"];
    for (key, value) in budget["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &pod_labels[key.as_str().unwrap()],
            value,
            "the PDB selects the pods"
        );
    }
    let scaler = &manifests["ScaledObject"];
    assert_eq!(
        scaler["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(name)
    );
    let trigger = &scaler["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    assert_eq!(trigger["metadata"]["mode"].as_str(), Some("QueueLength"));
    let defaults = config::load(None).unwrap();
    assert_eq!(
        trigger["metadata"]["queueName"].as_str(),
        Some(defaults.amqp.queue.as_str()),
        "KEDA watches the main queue"
    );
    let auth = &manifests["TriggerAuthentication"];
    assert_eq!(
        trigger["authenticationRef"]["name"].as_str(),
        auth["metadata"]["name"].as_str()
    );
    let secret_ref = &auth["spec"]["secretTargetRef"][0];
    let deployment_env = first_container(deployment)["env"].as_sequence().unwrap();
    assert!(
        deployment_env.iter().any(|var| {
            let from = &var["valueFrom"]["secretKeyRef"];
            var["name"] == "ZHIMA__AMQP__URL"
                && from["name"] == secret_ref["name"]
                && from["key"] == secret_ref["key"]
        }),
        "KEDA reads the broker URL the workers use"
    );
    let minimum = scaler["spec"]["minReplicaCount"].as_u64().unwrap();
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(minimum));
    let expected = alert_rules()
        .into_iter()
        .find(|rule| rule["alert"] == "ZhimaReplicasBelowExpected")
        .unwrap();
    let threshold = expected["expr"]
        .as_str()
        .unwrap()
        .rsplit('<')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        threshold,
        minimum.to_string(),
        "the alert expects minReplicaCount replicas"
    );

    let cron = &manifests["CronJob"];
    let container = first_container(cron);
    assert_eq!(container["image"], first_container(deployment)["image"]);
    let args = strings(&container["args"]);
    let mut argv = vec!["zhima-worker".to_owned()];
    argv.extend(args.iter().cloned());
    assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
    assert_eq!(args[0], "reconcile");
    for flag in ["--bill", "--out"] {
        let path = args.iter().skip_while(|a| *a != flag).nth(1).unwrap();
        assert_under_a_mount(container, path, flag);
    }
    let env = container_env(container);
    in_own_process(|| {
        settings_from_env("CronJob", &env);
    });
}

#[test]
fn the_dockerfile_is_multi_stage_and_its_runtime_stage_copies_the_binary_only() {
    let dockerfile = std::fs::read_to_string(repo_file("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    assert!(stages.len() >= 3, "a build stage and a runtime stage");
    let runtime = stages.last().unwrap();
    let copies: Vec<&str> = runtime.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].starts_with("COPY --from=build /src/target/release/zhima-worker "),
        "{}",
        copies[0]
    );
}
