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
