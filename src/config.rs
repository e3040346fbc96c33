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

use std::collections::BTreeSet;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::retry::{RetryPolicy, RetryPolicyError};
use crate::upstream::signing::{Charset, SignType};

/// Upper bound of `rate_limit.heartbeat_ms` and `rate_limit.lease_ms`.
const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;

/// The documented defaults, compiled in so that the file and the behaviour
/// cannot drift apart.
pub(crate) const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
    pub(crate) reconcile: ReconcileSettings,
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
    pub(crate) delivery_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub(crate) max_connections: NonZeroU32,
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
    pub(crate) connect_timeout_ms: u64,
    pub timeout_ms: u64,
    pub product_code: String,
    pub app_auth_token: SecretString,
    pub(crate) proxy: String,
    pub(crate) transaction_validity_s: u64,
    pub(crate) transaction_margin_s: u64,
    /// An answer longer than this fails the call (retryable) after reading
    /// at most this many bytes.
    pub max_response_bytes: u64,
    /// Accept a private key file that group or others can read (ssh refuses it).
    pub allow_shared_key_file: bool,
}

impl UpstreamSettings {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The token, or `None` for a direct merchant (empty in the config).
    pub(crate) fn app_auth_token(&self) -> Option<&str> {
        let token = self.app_auth_token.expose_secret();
        (!token.is_empty()).then_some(token)
    }

    pub(crate) fn proxy(&self) -> Option<&str> {
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
    pub(crate) qps: NonZeroU32,
    pub(crate) burst: NonZeroU32,
    /// How often a replica renews its lease in `worker_leases` (PostgreSQL).
    pub heartbeat_ms: u64,
    /// How long a lease lives without renewal: a dead replica's share is
    /// reclaimed within about lease_ms + heartbeat_ms.
    pub lease_ms: u64,
}

impl RateLimitSettings {
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub(crate) max_attempts: NonZeroU32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub(crate) concurrency: NonZeroU32,
    pub shutdown_grace_s: u64,
    pub(crate) probe_interval_s: u64,
    pub max_unverified_in_row: NonZeroU32,
}

impl WorkerSettings {
    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    pub(crate) fn probe_interval(&self) -> Duration {
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
pub(crate) enum LogFormat {
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub(crate) format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileSettings {
    pub(crate) utc_offset_hours: i8,
}

/// Keys for personal data. Only the path is checked here: the file is read by
/// the commands that need it (`run`), see `crate::pii::PiiKey::load`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// The PII key: >= 32 random bytes shared by every replica (job
    /// fingerprints today, the PIPL blind index later).
    pub hmac_key_path: PathBuf,
}

/// Loads the layered settings and validates them.
pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    load_layers(config_file).map(|(settings, _)| settings)
}

/// The layers in order (defaults, `--config FILE`, `DATABASE_URL`/`AMQP_URL`,
/// `ZHIMA__…`), extracted and validated; the figment is kept for provenance.
fn load_layers(config_file: Option<&Path>) -> Result<(Settings, Figment), ConfigError> {
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
    let string_keys = string_keys();
    let figment = figment
        .merge(EnvLayer::new(shortcuts, &string_keys, shortcut_variable))
        .merge(EnvLayer::new(
            Env::prefixed("ZHIMA__").split("__"),
            &string_keys,
            prefixed_variable,
        ));
    let settings: Settings = figment.extract().map_err(parse_error)?;
    settings.validate()?;
    Ok((settings, figment))
}

fn shortcut_variable(keys: &[&str]) -> String {
    match keys {
        ["database", "url"] => "DATABASE_URL".to_owned(),
        _ => "AMQP_URL".to_owned(),
    }
}

fn prefixed_variable(keys: &[&str]) -> String {
    let upper: Vec<String> = keys.iter().map(|key| key.to_ascii_uppercase()).collect();
    format!("ZHIMA__{}", upper.join("__"))
}

/// Where a value of the effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub(crate) enum ValueSource {
    /// `config/default.toml`, compiled in.
    Default,
    /// The `--config` file.
    File(PathBuf),
    /// The environment variable that set it.
    Env(String),
}

impl std::fmt::Display for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(variable) => write!(f, "env {variable}"),
        }
    }
}

/// One key of the effective configuration, its value already redacted.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct EffectiveValue {
    /// In the file's spelling: `rate_limit.qps`.
    pub(crate) key: String,
    /// TOML-like (strings quoted); a secret's password or contents are `***`.
    pub(crate) value: String,
    pub(crate) source: ValueSource,
}

/// The configuration `load` would return, key by key with its source, for
/// `config show`. Fails exactly as `load` does, so an invalid configuration
/// reads the same here as for every other command.
pub(crate) fn effective(config_file: Option<&Path>) -> Result<Vec<EffectiveValue>, ConfigError> {
    let (_, figment) = load_layers(config_file)?;
    Ok(leaf_keys()
        .into_iter()
        .filter_map(|key| {
            let value = figment.find_value(&key).ok()?;
            let source = figment
                .find_metadata(&key)
                .map_or(ValueSource::Default, |metadata| {
                    value_source(&key, metadata)
                });
            Some(EffectiveValue {
                value: redacted(&key, &value),
                key,
                source,
            })
        })
        .collect())
}

fn value_source(key: &str, metadata: &Metadata) -> ValueSource {
    match &metadata.source {
        Some(figment::Source::File(path)) => ValueSource::File(path.clone()),
        _ if metadata.name.contains("environment") => {
            let keys: Vec<&str> = key.split('.').collect();
            ValueSource::Env(metadata.interpolate(&Profile::Default, &keys))
        }
        _ => ValueSource::Default,
    }
}

/// A secret key's value with its password (URLs) or whole contents replaced
/// by `***`; an empty secret stays `""` so that "not set" remains visible.
fn redacted(key: &str, value: &Value) -> String {
    let shown = serde_json::to_string(value).unwrap_or_else(|_| "?".to_owned());
    let has_password = |text: &str| Url::parse(text).is_ok_and(|url| url.password().is_some());
    match value.as_str() {
        Some("") => shown,
        Some(text) if is_secret_key(key) && key.ends_with("url") => {
            format!("{:?}", redacted_url(text))
        }
        _ if is_secret_key(key) => "\"***\"".to_owned(),
        Some(text) if has_password(text) => format!("{:?}", redacted_url(text)),
        _ => shown,
    }
}

/// `postgres://user:***@host/db`: the user, host and path stay (they are what
/// an operator checks), the password and any credential in the query go.
fn redacted_url(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return "***".to_owned();
    };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return "***".to_owned();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_ascii_lowercase();
                let is_secret = ["pass", "secret", "token", "key"]
                    .iter()
                    .any(|word| lower.contains(word));
                let value = if is_secret { "***".into() } else { value };
                (name.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Every key of `config/default.toml` (the settings allow no others).
fn leaf_keys() -> Vec<String> {
    default_keys(|_| true).into_iter().collect()
}

/// The defaults alone (`config/default.toml`), without the environment: for
/// unit tests, which run beside tests that set environment variables.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn defaults() -> Settings {
    Figment::from(Toml::string(DEFAULT_TOML))
        .extract()
        .expect("the defaults are valid")
}

/// The keys whose default (in `config/default.toml`) is a string: the text of
/// their environment variable is taken as written. Derived from the defaults so
/// that a new string key needs no second list.
fn string_keys() -> BTreeSet<String> {
    default_keys(|value| matches!(value, Value::String(..)))
}

/// The keys of `config/default.toml` whose default value passes `wanted`.
fn default_keys(wanted: fn(&Value) -> bool) -> BTreeSet<String> {
    fn walk(prefix: &str, dict: &Dict, wanted: fn(&Value) -> bool, keys: &mut BTreeSet<String>) {
        for (name, value) in dict {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                Value::Dict(_, inner) => walk(&path, inner, wanted, keys),
                _ if wanted(value) => {
                    keys.insert(path);
                }
                _ => {}
            }
        }
    }
    let mut keys = BTreeSet::new();
    if let Ok(data) = Toml::string(DEFAULT_TOML).data() {
        for dict in data.values() {
            walk("", dict, wanted, &mut keys);
        }
    }
    keys
}

/// Environment variables as configuration values. figment's `Env` reads
/// `2014072300007148` as a number and `true` as a boolean, which a string key
/// (an app id, a queue name, a token) then refuses; here a string key keeps
/// the text exactly as written (leading zeros included), and every other key
/// is parsed as `Env` would.
struct EnvLayer {
    env: Env,
    string_keys: BTreeSet<String>,
    /// The variable that sets a key (`["upstream", "app_id"]` ->
    /// `ZHIMA__UPSTREAM__APP_ID`), for `config show`.
    variable: fn(&[&str]) -> String,
}

impl EnvLayer {
    fn new(env: Env, string_keys: &BTreeSet<String>, variable: fn(&[&str]) -> String) -> Self {
        Self {
            env,
            string_keys: string_keys.clone(),
            variable,
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let variable = self.variable;
        self.env
            .metadata()
            .interpolater(move |_: &Profile, keys: &[&str]| variable(keys))
    }

    /// Values are left untagged, so that the figment tags them with this
    /// layer's metadata (which `config show` reads back per key).
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, text) in self.env.iter() {
            let key = key.as_str();
            let value = if self.string_keys.contains(key) {
                Value::from(text)
            } else {
                match text.parse::<Value>() {
                    Ok(value) => value,
                    Err(never) => match never {},
                }
            };
            if let Value::Dict(_, nested) = figment::util::nest(key, value) {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `source` over `target`, dictionaries merged key by key.
fn merge_dict(target: &mut Dict, source: Dict) {
    for (name, value) in source {
        match (target.get_mut(&name), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, inner)) => merge_dict(existing, inner),
            (_, value) => {
                target.insert(name, value);
            }
        }
    }
}

/// Keys whose value must never be shown, even in an error about that value.
const SECRET_KEYS: [&str; 3] = ["amqp.url", "database.url", "upstream.app_auth_token"];

fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    SECRET_KEYS.contains(&key)
        || ["token", "secret", "password"]
            .iter()
            .any(|word| last.contains(word))
        || last == "key"
        || last.ends_with("_key")
}

/// Names the key in the file's spelling (`rate_limit.qps`) whichever layer
/// supplied it. For a secret key the detail says what was expected, never
/// what was found.
fn parse_error(error: figment::Error) -> ConfigError {
    let key = error.path.join(".").to_lowercase();
    let source_name = error
        .metadata
        .as_ref()
        .map(|metadata| format!(" (from {})", metadata.name))
        .unwrap_or_default();
    let detail = if is_secret_key(&key) {
        secret_safe_detail(&error.kind)
    } else {
        error.kind.to_string()
    };
    ConfigError::Parse {
        key,
        detail,
        source_name,
    }
}

fn secret_safe_detail(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
            format!("invalid value (not shown: secret), expected {expected}")
        }
        Kind::MissingField(_) | Kind::UnknownField(..) | Kind::DuplicateField(_) => {
            kind.to_string()
        }
        _ => "invalid value (not shown: secret)".to_owned(),
    }
}

impl Settings {
    /// Cross-field rules that serde cannot express. Each error names the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp()?;
        self.validate_upstream()?;
        self.retry_policy()?;
        self.validate_lease()?;
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

    /// The lease times feed `Instant`/`Duration` arithmetic and i64
    /// milliseconds in SQL: a bound of one day keeps all of it far from
    /// overflow (a lease is a liveness timeout, seconds in practice).
    fn validate_lease(&self) -> Result<(), ConfigError> {
        let limit = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.heartbeat_ms", limit.heartbeat_ms),
            ("rate_limit.lease_ms", limit.lease_ms),
        ] {
            if value > MAX_LEASE_MS {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at most {MAX_LEASE_MS} (one day)"),
                ));
            }
        }
        let minimum_lease = limit.heartbeat_ms.checked_mul(3);
        if limit.heartbeat_ms == 0 || minimum_lease.is_none_or(|minimum| limit.lease_ms < minimum) {
            return Err(ConfigError::invalid(
                "rate_limit.lease_ms",
                "heartbeat_ms must be > 0 and lease_ms at least 3 × heartbeat_ms",
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
        if up.max_response_bytes == 0 {
            return Err(ConfigError::invalid(
                "upstream.max_response_bytes",
                "must be > 0",
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

    /// The retry policy of the `[retry]` section, checked against the
    /// upstream's transaction_id validity. [`load`] calls it, so it cannot
    /// fail for loaded settings. Built from the section on each call (settings
    /// edited after loading are honoured), so a caller builds it once and
    /// hands the same policy to every component that needs it.
    pub(crate) fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        let retry = &self.retry;
        let policy = RetryPolicy::new(
            Duration::from_millis(retry.initial_delay_ms),
            Duration::from_millis(retry.max_delay_ms),
            retry.max_attempts.get(),
        )
        .map_err(retry_policy_error)?;
        let worst_case = policy.worst_case_schedule();
        // Half the validity, and never more than the window the processor
        // allows calls in (a large transaction_margin_s makes that shorter).
        let budget = (Duration::from_secs(self.upstream.transaction_validity_s) / 2)
            .min(self.upstream.safe_call_window());
        if worst_case > budget {
            return Err(ConfigError::invalid(
                "retry.max_attempts",
                format!(
                    "the worst-case retry schedule ({} s) must fit in half of \
                     upstream.transaction_validity_s and in transaction_validity_s - \
                     transaction_margin_s ({} s); lower max_attempts or max_delay_ms",
                    worst_case.as_secs(),
                    budget.as_secs()
                ),
            ));
        }
        Ok(policy)
    }
}

/// Names the `[retry]` key that [`RetryPolicy::new`] refused.
fn retry_policy_error(error: RetryPolicyError) -> ConfigError {
    match error {
        RetryPolicyError::ZeroInitialDelay => {
            ConfigError::invalid("retry.initial_delay_ms", "must be > 0")
        }
        RetryPolicyError::MinAboveMax { .. } => {
            ConfigError::invalid("retry.max_delay_ms", "must be ≥ retry.initial_delay_ms")
        }
        RetryPolicyError::NoAttempts => {
            ConfigError::invalid("retry.max_attempts", error.to_string())
        }
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

    /// 12-factor deployments set everything from the environment, and real app
    /// ids, product codes, tokens and queue names can be all digits.
    #[test]
    fn string_keys_accept_numbers_and_booleans_from_the_environment() {
        Jail::expect_with(|jail| {
            type Read = fn(&Settings) -> String;
            let cases: [(&str, &str, Read); 10] = [
                ("ZHIMA__UPSTREAM__APP_ID", "2014072300007148", |s| {
                    s.upstream.app_id.clone()
                }),
                (
                    "ZHIMA__UPSTREAM__PRODUCT_CODE",
                    "01010100001000001200",
                    |s| s.upstream.product_code.clone(),
                ),
                (
                    "ZHIMA__UPSTREAM__APP_AUTH_TOKEN",
                    "201509000000000000000000000001",
                    |s| s.upstream.app_auth_token.expose_secret().to_owned(),
                ),
                ("ZHIMA__UPSTREAM__PRIVATE_KEY_PATH", "0600", |s| {
                    s.upstream.private_key_path.display().to_string()
                }),
                ("ZHIMA__UPSTREAM__ALIPAY_PUBLIC_KEY_PATH", "1.50", |s| {
                    s.upstream.alipay_public_key_path.display().to_string()
                }),
                ("ZHIMA__AMQP__EXCHANGE", "true", |s| s.amqp.exchange.clone()),
                ("ZHIMA__AMQP__QUEUE", "007", |s| s.amqp.queue.clone()),
                ("ZHIMA__AMQP__DEAD_QUEUE", "1e3", |s| {
                    s.amqp.dead_queue.clone()
                }),
                ("ZHIMA__LOG__FILTER", "false", |s| s.log.filter.clone()),
                ("ZHIMA__HTTP__LISTEN", "", |s| s.http.listen.clone()),
            ];
            for (var, value, _) in &cases {
                jail.set_env(var, value);
            }
            let settings = load(None).expect("all values are valid strings");
            for (var, value, read) in &cases {
                assert_eq!(read(&settings), *value, "{var}");
            }
            Ok(())
        });
    }

    /// Every string key of the defaults, set to text that looks like a number
    /// or a boolean: the value may break a rule of that key (a URL, an enum),
    /// but it is never refused for its type.
    #[test]
    fn no_string_key_refuses_a_numeric_or_boolean_text_for_its_type() {
        let keys = string_keys();
        assert!(
            keys.contains("upstream.app_id") && keys.contains("amqp.queue"),
            "{keys:?}"
        );
        for key in &keys {
            for value in ["12345", "true", "0.5"] {
                let var = format!("ZHIMA__{}", key.replace('.', "__").to_uppercase());
                Jail::expect_with(|jail| {
                    jail.set_env(&var, value);
                    if let Err(error) = load(None) {
                        let text = error.to_string();
                        assert!(!text.contains("invalid type"), "{var}={value}: {text}");
                        assert!(text.contains(key.as_str()), "{var}={value}: {text}");
                    }
                    Ok(())
                });
            }
        }
    }

    #[test]
    fn config_errors_never_show_the_value_of_a_secret_key() {
        let cases = [
            (
                "c.toml",
                "[upstream]\napp_auth_token = 98765432123\n",
                "98765432123",
            ),
            ("c.toml", "[database]\nurl = 98765432123\n", "98765432123"),
            ("c.toml", "[amqp]\nurl = true\n", "true"),
        ];
        for (file, text, secret) in cases {
            Jail::expect_with(|jail| {
                jail.create_file(file, text)?;
                let error = load(Some(Path::new(file))).unwrap_err().to_string();
                assert!(
                    error.contains("url") || error.contains("app_auth_token"),
                    "{error}"
                );
                assert!(!error.contains(secret), "{error}");
                Ok(())
            });
        }
        for (var, value) in [
            ("ZHIMA__DATABASE__URL", "mysql://app:hunter2@db/x"),
            ("ZHIMA__AMQP__URL", "http://app:hunter2@mq/"),
            (
                "ZHIMA__UPSTREAM__APP_AUTH_TOKEN",
                "hunter2hunter2hunter2hunter2hunter2hunter2",
            ),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(var, value);
                let error = load(None).unwrap_err().to_string();
                assert!(!error.contains("hunter2"), "{error}");
                Ok(())
            });
        }
    }

    #[test]
    fn lease_times_that_would_overflow_are_refused_naming_the_key() {
        let cases = [
            (
                "ZHIMA__RATE_LIMIT__LEASE_MS",
                "18446744073709551615",
                "rate_limit.lease_ms",
            ),
            (
                "ZHIMA__RATE_LIMIT__HEARTBEAT_MS",
                "6148914691236517206",
                "rate_limit.heartbeat_ms",
            ),
            (
                "ZHIMA__RATE_LIMIT__LEASE_MS",
                "86400001",
                "rate_limit.lease_ms",
            ),
        ];
        for (var, value, key) in cases {
            Jail::expect_with(|jail| {
                jail.set_env(var, value);
                let error = load(None).expect_err(var).to_string();
                assert!(error.contains(key), "{var}={value}: {error}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            jail.set_env("ZHIMA__RATE_LIMIT__LEASE_MS", "86400000");
            jail.set_env("ZHIMA__RATE_LIMIT__HEARTBEAT_MS", "28800000");
            load(None).expect("one day is the bound, inclusive");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let error = load(Some(Path::new("/nonexistent/zhima.toml"))).unwrap_err();
        assert!(matches!(error, ConfigError::MissingFile { .. }));
    }

    #[test]
    fn shown_urls_keep_user_and_host_but_never_a_password_or_credential_query() {
        let redacted_url = |text: &str| redacted("database.url", &Value::from(text.to_owned()));
        assert_eq!(
            redacted_url("postgres://user:pw1@host/db"),
            "\"postgres://user:***@host/db\""
        );
        let shown = redacted_url("postgres://host/db?user=u&password=pw2&sslmode=require");
        assert!(
            !shown.contains("pw2") && shown.contains("sslmode=require"),
            "{shown}"
        );
        assert_eq!(redacted_url("not a url pw3"), "\"***\"");
        assert_eq!(
            redacted(
                "upstream.proxy",
                &Value::from("http://u:pw4@proxy:3128".to_owned())
            ),
            "\"http://u:***@proxy:3128/\""
        );
    }

    #[test]
    fn shown_secrets_are_stars_unless_empty() {
        let token = |text: &str| redacted("upstream.app_auth_token", &Value::from(text.to_owned()));
        assert_eq!(token("tok-123"), "\"***\"");
        assert_eq!(token(""), "\"\"");
        assert_eq!(redacted("rate_limit.qps", &Value::from(50u32)), "50");
    }

    #[test]
    fn each_value_is_traced_to_its_layer_and_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("file.toml", "[worker]\nconcurrency = 4\n")?;
            jail.set_env("ZHIMA__RETRY__MAX_ATTEMPTS", "3");
            jail.set_env("AMQP_URL", "amqp://u:pw@mq/%2f");
            let values = effective(Some(Path::new("file.toml"))).expect("valid");
            let source = |key: &str| {
                values
                    .iter()
                    .find(|value| value.key == key)
                    .map(|value| value.source.to_string())
                    .expect("key shown")
            };
            assert_eq!(source("worker.concurrency"), "file file.toml");
            assert_eq!(
                source("retry.max_attempts"),
                "env ZHIMA__RETRY__MAX_ATTEMPTS"
            );
            assert_eq!(source("amqp.url"), "env AMQP_URL");
            assert_eq!(source("rate_limit.qps"), "default");
            assert_eq!(values.len(), leaf_keys().len());
            Ok(())
        });
    }
}
