//! Typed settings: built-in defaults (`config/default.toml`, compiled in), then
//! `--config FILE`, then environment variables, parsed and validated once at
//! start-up.
//!
//! Everything that can be wrong with the configuration is reported here, naming
//! the key, so that a bad value never turns into a failed job later. This module
//! reads files and the environment; it does not open keys or connections.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::upstream::signing::{Charset, SignType};

/// The documented defaults, compiled in so that the file and the behaviour
/// cannot drift apart.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration: `{key}`: {detail}{source_name}")]
    Parse {
        key: String,
        detail: String,
        source_name: String,
    },
    #[error("invalid configuration: `{key}` {rule}")]
    Invalid { key: &'static str, rule: String },
}

impl ConfigError {
    fn invalid(key: &'static str, rule: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            rule: rule.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub upstream: UpstreamSettings,
    pub rate_limit: RateLimitSettings,
    pub retry: RetrySettings,
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub reconcile: ReconcileSettings,
    pub pii: PiiSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretString,
    pub exchange: String,
    pub queue: String,
    pub dead_queue: String,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub gateway_url: Url,
    pub app_id: String,
    pub private_key_path: PathBuf,
    pub alipay_public_key_path: PathBuf,
    pub sign_type: SignType,
    pub charset: Charset,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    pub product_code: String,
    pub app_auth_token: SecretString,
    pub proxy: String,
    pub transaction_validity_s: u64,
    pub transaction_margin_s: u64,
}

impl UpstreamSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The token, or `None` for a direct merchant (empty in the config).
    pub fn app_auth_token(&self) -> Option<&str> {
        let token = self.app_auth_token.expose_secret();
        (!token.is_empty()).then_some(token)
    }

    pub fn proxy(&self) -> Option<&str> {
        (!self.proxy.is_empty()).then_some(self.proxy.as_str())
    }

    /// The latest moment after a job's first call at which another call is still
    /// safely inside the upstream's transaction_id validity.
    pub fn safe_call_window(&self) -> Duration {
        Duration::from_secs(
            self.transaction_validity_s
                .saturating_sub(self.transaction_margin_s),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub qps: NonZeroU32,
    pub burst: NonZeroU32,
    /// How often a replica renews its lease in `worker_leases` (PostgreSQL).
    pub heartbeat_ms: u64,
    /// How long a lease lives without renewal: a dead replica's share is
    /// reclaimed within about lease_ms + heartbeat_ms.
    pub lease_ms: u64,
}

impl RateLimitSettings {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: NonZeroU32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: NonZeroU32,
    pub shutdown_grace_s: u64,
    pub probe_interval_s: u64,
    pub max_unverified_in_row: NonZeroU32,
}

impl WorkerSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval_s.max(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub utc_offset_hours: i8,
}

/// Keys for personal data. Only the path is checked here: the file is read by
/// the commands that need it (`run`), see [`crate::pii::PiiKey::load`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// The PII key: >= 32 random bytes shared by every replica (job
    /// fingerprints today, the PIPL blind index later).
    pub hmac_key_path: PathBuf,
}

/// Loads the layered settings and validates them.
pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(path) = config_file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let shortcuts = Env::raw()
        .only(&["DATABASE_URL", "AMQP_URL"])
        .map(|key| match key.as_str() {
            "DATABASE_URL" => "database.url".into(),
            _ => "amqp.url".into(),
        });
    let settings: Settings = figment
        .merge(shortcuts)
        .merge(Env::prefixed("ZHIMA__").split("__"))
        .extract()
        .map_err(parse_error)?;
    settings.validate()?;
    Ok(settings)
}

/// Names the key in the file's spelling (`rate_limit.qps`) whichever layer
/// supplied it.
fn parse_error(error: figment::Error) -> ConfigError {
    let key = error.path.join(".").to_lowercase();
    let source_name = error
        .metadata
        .as_ref()
        .map(|metadata| format!(" (from {})", metadata.name))
        .unwrap_or_default();
    ConfigError::Parse {
        key,
        detail: error.kind.to_string(),
        source_name,
    }
}

impl Settings {
    /// Cross-field rules that serde cannot express. Each error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp()?;
        self.validate_upstream()?;
        self.validate_retry()?;
        if self.rate_limit.heartbeat_ms == 0
            || self.rate_limit.lease_ms < 3 * self.rate_limit.heartbeat_ms
        {
            return Err(ConfigError::invalid(
                "rate_limit.lease_ms",
                "heartbeat_ms must be > 0 and lease_ms at least 3 × heartbeat_ms",
            ));
        }
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                "http.listen",
                "must be empty (off) or host:port, e.g. 127.0.0.1:9187",
            ));
        }
        if self.pii.hmac_key_path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "pii.hmac_key_path",
                "must name the PII key file (make one with `head -c 32 /dev/urandom > FILE`)",
            ));
        }
        if !(-12..=14).contains(&self.reconcile.utc_offset_hours) {
            return Err(ConfigError::invalid(
                "reconcile.utc_offset_hours",
                "must be between -12 and 14",
            ));
        }
        Ok(())
    }

    fn validate_amqp(&self) -> Result<(), ConfigError> {
        let url = self.amqp.url.expose_secret();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::invalid(
                "amqp.url",
                "must start with amqp:// or amqps://",
            ));
        }
        for (key, name) in [
            ("amqp.exchange", &self.amqp.exchange),
            ("amqp.queue", &self.amqp.queue),
            ("amqp.dead_queue", &self.amqp.dead_queue),
        ] {
            if name.is_empty() || name.len() > 200 {
                return Err(ConfigError::invalid(key, "must be 1 to 200 characters"));
            }
        }
        if self.amqp.queue == self.amqp.dead_queue {
            return Err(ConfigError::invalid(
                "amqp.dead_queue",
                "must differ from amqp.queue",
            ));
        }
        Ok(())
    }

    fn validate_upstream(&self) -> Result<(), ConfigError> {
        let up = &self.upstream;
        if !matches!(up.gateway_url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "upstream.gateway_url",
                "must be an http:// or https:// URL",
            ));
        }
        if up.app_id.is_empty() || up.app_id.len() > 32 {
            return Err(ConfigError::invalid(
                "upstream.app_id",
                "must be 1 to 32 characters",
            ));
        }
        if up.connect_timeout_ms == 0 || up.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "upstream.timeout_ms",
                "timeouts (connect_timeout_ms, timeout_ms) must be > 0",
            ));
        }
        crate::job::validate_product_code(&up.product_code)
            .map_err(|e| ConfigError::invalid("upstream.product_code", e.rule))?;
        if up.app_auth_token.expose_secret().chars().count() > 40 {
            return Err(ConfigError::invalid(
                "upstream.app_auth_token",
                "must be at most 40 characters",
            ));
        }
        if let Some(proxy) = up.proxy()
            && Url::parse(proxy).is_err()
        {
            return Err(ConfigError::invalid(
                "upstream.proxy",
                "must be empty or a URL such as http://proxy:3128",
            ));
        }
        if up.transaction_margin_s >= up.transaction_validity_s {
            return Err(ConfigError::invalid(
                "upstream.transaction_margin_s",
                "must be smaller than upstream.transaction_validity_s",
            ));
        }
        Ok(())
    }

    fn validate_retry(&self) -> Result<(), ConfigError> {
        let retry = &self.retry;
        if retry.initial_delay_ms == 0 {
            return Err(ConfigError::invalid(
                "retry.initial_delay_ms",
                "must be > 0",
            ));
        }
        if retry.initial_delay_ms > retry.max_delay_ms {
            return Err(ConfigError::invalid(
                "retry.max_delay_ms",
                "must be ≥ retry.initial_delay_ms",
            ));
        }
        let worst_case = crate::retry::RetryPolicy::from_settings(retry)
            .map_err(|e| ConfigError::invalid("retry", e.to_string()))?
            .worst_case_schedule();
        let budget = Duration::from_secs(self.upstream.transaction_validity_s) / 2;
        if worst_case > budget {
            return Err(ConfigError::invalid(
                "retry.max_attempts",
                format!(
                    "the worst-case retry schedule ({} s) must fit in half of \
                     upstream.transaction_validity_s ({} s); lower max_attempts or max_delay_ms",
                    worst_case.as_secs(),
                    budget.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::result_large_err
    )]
    use super::*;
    use figment::Jail;

    #[test]
    fn built_in_defaults_load_and_validate() {
        Jail::expect_with(|_| {
            let settings = load(None).expect("defaults are valid");
            assert_eq!(settings.amqp.queue, "zhima.relation.verify");
            assert_eq!(settings.upstream.sign_type, SignType::Rsa2);
            assert_eq!(settings.upstream.connect_timeout(), Duration::from_secs(3));
            assert_eq!(settings.upstream.timeout(), Duration::from_secs(15));
            assert!(settings.upstream.app_auth_token().is_none());
            Ok(())
        });
    }

    #[test]
    fn config_file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[rate_limit]\nqps = 7\nburst = 2\n")?;
            jail.set_env("ZHIMA__RATE_LIMIT__BURST", "3");
            jail.set_env("DATABASE_URL", "postgres://localhost/x");
            jail.set_env("AMQP_URL", "amqp://u:p@h:5672/v");
            let settings = load(Some(Path::new("c.toml"))).expect("valid");
            assert_eq!(settings.rate_limit.qps.get(), 7);
            assert_eq!(settings.rate_limit.burst.get(), 3);
            assert_eq!(
                settings.database.url.expose_secret(),
                "postgres://localhost/x"
            );
            assert_eq!(settings.amqp.url.expose_secret(), "amqp://u:p@h:5672/v");
            Ok(())
        });
    }

    #[test]
    fn prefixed_variable_wins_over_shortcut() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://a/x");
            jail.set_env("ZHIMA__DATABASE__URL", "postgres://b/y");
            let settings = load(None).expect("valid");
            assert_eq!(settings.database.url.expose_secret(), "postgres://b/y");
            Ok(())
        });
    }

    #[test]
    fn zero_qps_is_rejected_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("ZHIMA__RATE_LIMIT__QPS", "0");
            let error = load(None).expect_err("qps 0 is invalid").to_string();
            assert!(error.contains("qps"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[worker]\nconcurency = 3\n")?;
            let error = load(Some(Path::new("c.toml"))).unwrap_err().to_string();
            assert!(error.contains("concurency"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("ZHIMA__UPSTREAM__SIGN_TYPE", "MD5", "sign_type"),
            ("ZHIMA__UPSTREAM__CHARSET", "latin1", "charset"),
            ("ZHIMA__DATABASE__URL", "mysql://x", "database.url"),
            ("ZHIMA__HTTP__LISTEN", "nonsense", "http.listen"),
            ("ZHIMA__RATE_LIMIT__LEASE_MS", "500", "rate_limit.lease_ms"),
            (
                "ZHIMA__RETRY__INITIAL_DELAY_MS",
                "999999999",
                "retry.max_delay_ms",
            ),
            ("ZHIMA__UPSTREAM__GATEWAY_URL", "not a url", "gateway_url"),
        ];
        for (var, value, key) in cases {
            Jail::expect_with(|jail| {
                jail.set_env(var, value);
                let error = load(None).expect_err(var).to_string();
                assert!(error.contains(key), "{var}={value}: {error}");
                Ok(())
            });
        }
    }

    #[test]
    fn retry_schedule_longer_than_the_validity_window_is_rejected() {
        Jail::expect_with(|jail| {
            jail.set_env("ZHIMA__RETRY__MAX_ATTEMPTS", "500");
            jail.set_env("ZHIMA__RETRY__MAX_DELAY_MS", "3600000");
            let error = load(None).unwrap_err().to_string();
            assert!(error.contains("retry.max_attempts"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let error = load(Some(Path::new("/nonexistent/zhima.toml"))).unwrap_err();
        assert!(matches!(error, ConfigError::MissingFile { .. }));
    }
}
