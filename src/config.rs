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
    pub results: ResultSettings,
    pub retention: RetentionSettings,
    pub reuse: ReuseSettings,
    pub spend: SpendSettings,
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
    /// PEM CA certificates trusted for `amqps://` on top of the system's
    /// roots; empty = the system's roots only.
    pub tls_ca_path: PathBuf,
}

impl AmqpSettings {
    /// The configured CA file, if any.
    pub(crate) fn tls_ca_path(&self) -> Option<&Path> {
        (!self.tls_ca_path.as_os_str().is_empty()).then_some(self.tls_ca_path.as_path())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// After [`load`], carries `sslrootcert=<tls_ca_path>` when that key is set.
    pub url: SecretString,
    pub(crate) max_connections: NonZeroU32,
    /// PEM CA certificates that verify PostgreSQL's server certificate
    /// (`sslmode=verify-ca|verify-full`); the same as `sslrootcert` in the URL.
    pub tls_ca_path: PathBuf,
}

/// The query parameters of a PostgreSQL URL that concern TLS.
#[derive(Debug, Default)]
struct PgTlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// sslmode values libpq and sqlx know.
const PG_SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl DatabaseSettings {
    fn tls_ca_path(&self) -> Option<&Path> {
        (!self.tls_ca_path.as_os_str().is_empty()).then_some(self.tls_ca_path.as_path())
    }

    /// Checks the TLS settings of a PostgreSQL URL and the CA file (from the
    /// URL or `database.tls_ca_path`): a CA is only accepted with an sslmode
    /// that verifies (sqlx, unlike libpq, does not verify under `require`),
    /// and its file must hold PEM certificates.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        // libpq's variable, which sqlx honours too.
        self.validate_tls_with(std::env::var("PGSSLMODE").ok())
    }

    /// [`Self::validate_tls`] with `PGSSLMODE`'s value given.
    fn validate_tls_with(&self, pgsslmode: Option<String>) -> Result<(), ConfigError> {
        let text = self.url.expose_secret();
        if text.starts_with("sqlite:") {
            if self.tls_ca_path().is_some() {
                return Err(ConfigError::invalid(
                    "database.tls_ca_path",
                    "is for PostgreSQL; database.url is a SQLite database (leave it empty)",
                ));
            }
            return Ok(());
        }
        let mut params = pg_tls_params(text)?;
        if params.sslmode.is_none() {
            params.sslmode = pgsslmode;
        }
        if let Some(mode) = &params.sslmode
            && !PG_SSLMODES.contains(&mode.as_str())
        {
            return Err(ConfigError::invalid(
                "database.url",
                "has an unknown sslmode (in the URL or PGSSLMODE); use disable, allow, \
                 prefer, require, verify-ca or verify-full",
            ));
        }
        let (key, path) = match (&params.sslrootcert, self.tls_ca_path()) {
            (None, None) => return Ok(()),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "database.tls_ca_path",
                    "is set and database.url has sslrootcert too; give the CA file in one place",
                ));
            }
            (Some(url_path), None) => ("database.url", PathBuf::from(url_path)),
            (None, Some(path)) => ("database.tls_ca_path", path.to_path_buf()),
        };
        if !matches!(params.sslmode.as_deref(), Some("verify-ca" | "verify-full")) {
            return Err(ConfigError::invalid(
                key,
                "gives a CA file, so database.url must ask for verification: \
                 sslmode=verify-full (or verify-ca); other modes do not check the certificate",
            ));
        }
        crate::tls::read_ca_file(&path).map_err(|error| {
            ConfigError::invalid(
                key,
                format!("must name a PEM file of CA certificates: {error}"),
            )
        })?;
        Ok(())
    }

    /// Puts `database.tls_ca_path` into the URL as `sslrootcert`, where sqlx
    /// reads it (called once validated).
    fn apply_tls_ca_path(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.tls_ca_path() else {
            return Ok(());
        };
        let path = path
            .to_str()
            .ok_or_else(|| ConfigError::invalid("database.tls_ca_path", "must be a UTF-8 path"))?;
        let mut url = Url::parse(self.url.expose_secret())
            .map_err(|_| ConfigError::invalid("database.url", "is not a valid URL"))?;
        url.query_pairs_mut().append_pair("sslrootcert", path);
        self.url = SecretString::from(url.to_string());
        Ok(())
    }
}

/// The TLS parameters of a postgres:// URL (the last one wins, as in sqlx).
fn pg_tls_params(text: &str) -> Result<PgTlsParams, ConfigError> {
    let url =
        Url::parse(text).map_err(|_| ConfigError::invalid("database.url", "is not a valid URL"))?;
    let mut params = PgTlsParams::default();
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "sslmode" | "ssl-mode" => params.sslmode = Some(value.into_owned()),
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => {
                params.sslrootcert = Some(value.into_owned());
            }
            _ => {}
        }
    }
    Ok(params)
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
    /// Certificate mode (公钥证书模式) when set: the app's public-key
    /// certificate (its SN is sent as `app_cert_sn`). Empty = key mode.
    #[serde(default)]
    pub app_cert_path: PathBuf,
    /// Certificate mode: the Alipay public-key certificate (the key that
    /// verifies answers comes from it, not from `alipay_public_key_path`).
    #[serde(default)]
    pub alipay_cert_path: PathBuf,
    /// Certificate mode: Alipay's root certificate bundle (`alipay_root_cert_sn`).
    #[serde(default)]
    pub alipay_root_cert_path: PathBuf,
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

    /// Certificate mode's three files, or None in key mode (`app_cert_path`
    /// empty). [`load`] checked that they are set together.
    pub fn certificate_paths(&self) -> Option<CertificatePaths<'_>> {
        if self.app_cert_path.as_os_str().is_empty() {
            return None;
        }
        Some(CertificatePaths {
            app_cert: &self.app_cert_path,
            alipay_cert: &self.alipay_cert_path,
            alipay_root_cert: &self.alipay_root_cert_path,
        })
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

/// The files of certificate mode (`upstream.*_cert_path`).
#[derive(Debug, Clone, Copy)]
pub struct CertificatePaths<'a> {
    pub app_cert: &'a std::path::Path,
    pub alipay_cert: &'a std::path::Path,
    pub alipay_root_cert: &'a std::path::Path,
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

/// How long personal data is kept (`zhima-worker purge`), in whole days.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Raw response bodies of rows last changed longer ago are cleared.
    pub response_body_days: u32,
    /// Rows, ledger entries and outbox events older than this are deleted.
    pub row_days: u32,
    /// Dead-queue messages dead-lettered longer ago are removed.
    pub dead_letter_days: u32,
}

/// The longest retention accepted (about 100 years): more is a typo.
const MAX_RETENTION_DAYS: u32 = 36_500;

impl RetentionSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, days) in [
            ("retention.response_body_days", self.response_body_days),
            ("retention.row_days", self.row_days),
            ("retention.dead_letter_days", self.dead_letter_days),
        ] {
            if !(1..=MAX_RETENTION_DAYS).contains(&days) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be a whole number of days from 1 to {MAX_RETENTION_DAYS}"),
                ));
            }
        }
        Ok(())
    }
}

/// Answer reuse (issue 17): a job asking a question already answered with
/// success is completed from the stored answer, without a billed call.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseSettings {
    /// How old (in whole days, judged by the time of the paid answer) a
    /// stored answer may be and still be reused; 0 = reuse off.
    pub max_age_days: u32,
}

/// The oldest answer reuse may be asked to hand out: ten years. A relation
/// answer describes contacts as they were; a larger number is a typo (and
/// `retention.row_days` deletes older rows anyway).
pub(crate) const MAX_REUSE_AGE_DAYS: u32 = 3650;

impl ReuseSettings {
    /// The age bound, or None when reuse is off.
    pub(crate) fn max_age(&self) -> Option<chrono::TimeDelta> {
        (self.max_age_days > 0).then(|| chrono::TimeDelta::days(i64::from(self.max_age_days)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_age_days > MAX_REUSE_AGE_DAYS {
            return Err(ConfigError::invalid(
                "reuse.max_age_days",
                format!(
                    "must be a whole number of days from 0 (reuse off) to {MAX_REUSE_AGE_DAYS}"
                ),
            ));
        }
        Ok(())
    }
}

/// Result events (the transactional outbox and its relay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSettings {
    /// The durable topic exchange result events go to; empty = no events.
    pub exchange: String,
    /// How often the relay looks for events other replicas left unsent.
    pub poll_interval_ms: u64,
    /// Events published (and confirmed together) per relay round.
    pub batch_size: u32,
}

impl ResultSettings {
    /// Whether result events are written and published.
    pub fn enabled(&self) -> bool {
        !self.exchange.is_empty()
    }

    pub(crate) fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }
}

/// The daily budget of billed queries (`[spend]`), enforced by `crate::spend`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendSettings {
    /// Billed queries per statement day (the reconcile zone's day); 0 = no limit.
    pub daily_limit: u64,
    /// The share of the limit at which one WARN is logged (0 < r <= 1).
    pub warn_ratio: f64,
    /// How often a replica held at the limit re-reads the shared count.
    pub recheck_interval_s: u64,
}

/// The largest `spend.daily_limit` accepted: more is a typo (and must fit
/// the database's signed 64-bit counters).
pub(crate) const MAX_DAILY_LIMIT: u64 = 1_000_000_000;

impl SpendSettings {
    /// Whether a budget is enforced at all.
    pub fn is_limited(&self) -> bool {
        self.daily_limit > 0
    }

    pub(crate) fn recheck_interval(&self) -> Duration {
        Duration::from_secs(self.recheck_interval_s.max(1))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.daily_limit > MAX_DAILY_LIMIT {
            return Err(ConfigError::invalid(
                "spend.daily_limit",
                format!("must be 0 (no limit) or at most {MAX_DAILY_LIMIT} billed queries a day"),
            ));
        }
        let ratio = self.warn_ratio;
        if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
            return Err(ConfigError::invalid(
                "spend.warn_ratio",
                "must be a share of the limit greater than 0 and at most 1 (e.g. 0.8)",
            ));
        }
        if !(1..=3600).contains(&self.recheck_interval_s) {
            return Err(ConfigError::invalid(
                "spend.recheck_interval_s",
                "must be between 1 and 3600 seconds",
            ));
        }
        Ok(())
    }
}

/// Loads the layered settings and validates them.
pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    remember_config_file(config_file);
    load_layers(config_file).map(|(settings, _)| settings)
}

/// The `--config` file of the last [`load`], which `SIGHUP` reads again
/// (`spend.daily_limit`, see [`reload`]).
static LOADED_FROM: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn remember_config_file(config_file: Option<&Path>) {
    if let Ok(mut loaded_from) = LOADED_FROM.lock() {
        *loaded_from = config_file.map(Path::to_path_buf);
    }
}

/// The settings again, from the same layers as the last [`load`] (the same
/// `--config` file, the environment of this process): for `SIGHUP`.
pub fn reload() -> Result<Settings, ConfigError> {
    let file = LOADED_FROM.lock().ok().and_then(|path| path.clone());
    load_layers(file.as_deref()).map(|(settings, _)| settings)
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
    let mut settings: Settings = figment.extract().map_err(parse_error)?;
    settings.validate()?;
    settings.database.apply_tls_ca_path()?;
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
        self.database.validate_tls()?;
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
        self.validate_results()?;
        self.retention.validate()?;
        self.reuse.validate()?;
        self.spend.validate()?;
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

    fn validate_results(&self) -> Result<(), ConfigError> {
        let results = &self.results;
        if results.exchange.len() > 200 {
            return Err(ConfigError::invalid(
                "results.exchange",
                "must be empty (off) or 1 to 200 characters",
            ));
        }
        if results.enabled() && results.exchange == self.amqp.exchange {
            return Err(ConfigError::invalid(
                "results.exchange",
                "must differ from amqp.exchange (results would be consumed as jobs)",
            ));
        }
        if !(10..=MAX_LEASE_MS).contains(&results.poll_interval_ms) {
            return Err(ConfigError::invalid(
                "results.poll_interval_ms",
                format!("must be between 10 and {MAX_LEASE_MS}"),
            ));
        }
        if !(1..=10_000).contains(&results.batch_size) {
            return Err(ConfigError::invalid(
                "results.batch_size",
                "must be between 1 and 10000",
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
        if let Some(path) = self.amqp.tls_ca_path() {
            if !url.starts_with("amqps://") {
                return Err(ConfigError::invalid(
                    "amqp.tls_ca_path",
                    "is set but amqp.url is not amqps:// (the CA would not be used)",
                ));
            }
            crate::tls::read_ca_file(path).map_err(|error| {
                ConfigError::invalid(
                    "amqp.tls_ca_path",
                    format!("must name a PEM file of CA certificates: {error}"),
                )
            })?;
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
        let cert_mode = !up.app_cert_path.as_os_str().is_empty();
        for (key, path) in [
            ("upstream.alipay_cert_path", &up.alipay_cert_path),
            ("upstream.alipay_root_cert_path", &up.alipay_root_cert_path),
        ] {
            match (cert_mode, path.as_os_str().is_empty()) {
                (true, true) => {
                    return Err(ConfigError::invalid(
                        key,
                        "must be set in certificate mode (upstream.app_cert_path is set)",
                    ));
                }
                (false, false) => {
                    return Err(ConfigError::invalid(
                        key,
                        "is only used in certificate mode: set upstream.app_cert_path too, \
                         or leave it empty",
                    ));
                }
                _ => {}
            }
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
    fn result_events_default_on_and_bad_results_keys_are_rejected_naming_them() {
        Jail::expect_with(|jail| {
            let settings = load(None).expect("defaults");
            assert_eq!(settings.results.exchange, "zhima.results");
            assert!(settings.results.enabled());
            jail.set_env("ZHIMA__RESULTS__EXCHANGE", "");
            assert!(!load(None).expect("empty is off").results.enabled());
            for (key, value, named) in [
                ("ZHIMA__RESULTS__EXCHANGE", "zhima.jobs", "results.exchange"),
                (
                    "ZHIMA__RESULTS__EXCHANGE",
                    "x".repeat(201).as_str(),
                    "results.exchange",
                ),
                ("ZHIMA__RESULTS__BATCH_SIZE", "0", "results.batch_size"),
                ("ZHIMA__RESULTS__BATCH_SIZE", "10001", "results.batch_size"),
                (
                    "ZHIMA__RESULTS__POLL_INTERVAL_MS",
                    "0",
                    "results.poll_interval_ms",
                ),
                ("ZHIMA__RESULTS__POLL_INTERVAL_MS", "-5", "poll_interval_ms"),
            ] {
                jail.set_env(key, value);
                let error = load(None).expect_err(value).to_string();
                assert!(error.contains(named), "{key}={value}: {error}");
                jail.set_env(key, "");
                if key != "ZHIMA__RESULTS__EXCHANGE" {
                    jail.set_env(
                        key,
                        if key.ends_with("BATCH_SIZE") {
                            "200"
                        } else {
                            "1000"
                        },
                    );
                }
            }
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

    /// Runs `load` in a jail holding `ca.pem` (a CA certificate) and
    /// `junk.pem` (text, no certificate), with `env` set.
    fn load_with_ca_files(env: &[(&str, &str)]) -> Result<Settings, String> {
        let mut outcome = Err(String::new());
        Jail::expect_with(|jail| {
            jail.create_file("ca.pem", &crate::tls::test_ca_pem())?;
            jail.create_file("junk.pem", "not a certificate\n")?;
            for (var, value) in env {
                jail.set_env(var, value);
            }
            outcome = load(None).map_err(|error| error.to_string());
            Ok(())
        });
        outcome
    }

    #[test]
    fn tls_settings_are_checked_at_start_up_naming_the_key() {
        let amqps = ("AMQP_URL", "amqps://u:hunter2@mq.example/%2f");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case<'_>; 11] = [
            (
                &[("ZHIMA__AMQP__TLS_CA_PATH", "ca.pem")],
                "`amqp.tls_ca_path`",
                "amqp.url is not amqps://",
            ),
            (
                &[amqps, ("ZHIMA__AMQP__TLS_CA_PATH", "missing.pem")],
                "`amqp.tls_ca_path`",
                "cannot read missing.pem",
            ),
            (
                &[amqps, ("ZHIMA__AMQP__TLS_CA_PATH", "junk.pem")],
                "`amqp.tls_ca_path`",
                "no `-----BEGIN CERTIFICATE-----` block",
            ),
            (
                &[("ZHIMA__DATABASE__TLS_CA_PATH", "ca.pem")],
                "`database.tls_ca_path`",
                "SQLite",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://db.example/x?sslmode=require"),
                    ("ZHIMA__DATABASE__TLS_CA_PATH", "ca.pem"),
                ],
                "`database.tls_ca_path`",
                "sslmode=verify-full (or verify-ca)",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://db.example/x"),
                    ("ZHIMA__DATABASE__TLS_CA_PATH", "ca.pem"),
                ],
                "`database.tls_ca_path`",
                "sslmode=verify-full (or verify-ca)",
            ),
            (
                &[(
                    "DATABASE_URL",
                    "postgres://u:hunter2@db.example/x?sslmode=require&sslrootcert=ca.pem",
                )],
                "`database.url`",
                "sslmode=verify-full (or verify-ca)",
            ),
            (
                &[
                    (
                        "DATABASE_URL",
                        "postgres://db.example/x?sslmode=verify-full&sslrootcert=ca.pem",
                    ),
                    ("ZHIMA__DATABASE__TLS_CA_PATH", "ca.pem"),
                ],
                "`database.tls_ca_path`",
                "in one place",
            ),
            (
                &[(
                    "DATABASE_URL",
                    "postgres://u:hunter2@db.example/x?sslmode=verify-full&sslrootcert=missing.pem",
                )],
                "`database.url`",
                "cannot read missing.pem",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://db.example/x?sslmode=verify-ca"),
                    ("ZHIMA__DATABASE__TLS_CA_PATH", "junk.pem"),
                ],
                "`database.tls_ca_path`",
                "no `-----BEGIN CERTIFICATE-----` block",
            ),
            (
                &[(
                    "DATABASE_URL",
                    "postgres://u:hunter2@db.example/x?sslmode=verify",
                )],
                "`database.url`",
                "unknown sslmode",
            ),
        ];
        for (env, key, rule) in cases {
            let error = load_with_ca_files(env).expect_err(&format!("{env:?}"));
            assert!(
                error.contains(key) && error.contains(rule),
                "{env:?}: {error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn a_database_ca_file_reaches_the_url_as_sslrootcert() {
        let settings = load_with_ca_files(&[
            (
                "DATABASE_URL",
                "postgres://u:pw@db.example:5433/x?sslmode=verify-full",
            ),
            ("ZHIMA__DATABASE__TLS_CA_PATH", "ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            settings.database.url.expose_secret(),
            "postgres://u:pw@db.example:5433/x?sslmode=verify-full&sslrootcert=ca.pem"
        );
        let settings = load_with_ca_files(&[
            ("AMQP_URL", "amqps://mq.example/%2f"),
            ("ZHIMA__AMQP__TLS_CA_PATH", "ca.pem"),
            (
                "DATABASE_URL",
                "postgres://db.example/x?sslmode=verify-ca&sslrootcert=ca.pem",
            ),
        ])
        .unwrap();
        assert_eq!(settings.amqp.tls_ca_path(), Some(Path::new("ca.pem")));
        assert!(
            settings
                .database
                .url
                .expose_secret()
                .ends_with("?sslmode=verify-ca&sslrootcert=ca.pem")
        );
    }

    /// `PGSSLMODE` stands for a URL without sslmode (given here rather than
    /// set: the store's tests read it).
    #[test]
    fn pgsslmode_counts_as_the_url_sslmode() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, crate::tls::test_ca_pem()).unwrap();
        let database = |url: &str| DatabaseSettings {
            url: url.to_owned().into(),
            max_connections: NonZeroU32::MIN,
            tls_ca_path: ca.clone(),
        };
        let bare = database("postgres://db.example/x");
        bare.validate_tls_with(Some("verify-full".into())).unwrap();
        let error = bare.validate_tls_with(None).unwrap_err().to_string();
        assert!(
            error.contains("sslmode=verify-full (or verify-ca)"),
            "{error}"
        );
        let error = bare
            .validate_tls_with(Some("verify".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown sslmode"), "{error}");
        let explicit = database("postgres://db.example/x?sslmode=require");
        let error = explicit
            .validate_tls_with(Some("verify-full".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("must ask for verification"), "{error}");
    }

    #[test]
    fn answer_reuse_is_off_by_default_and_its_age_is_bounded_naming_the_key() {
        Jail::expect_with(|jail| {
            let settings = load(None).expect("defaults");
            assert_eq!(settings.reuse.max_age_days, 0);
            assert_eq!(settings.reuse.max_age(), None);
            jail.set_env("ZHIMA__REUSE__MAX_AGE_DAYS", "30");
            let settings = load(None).expect("30 days");
            assert_eq!(settings.reuse.max_age(), Some(chrono::TimeDelta::days(30)));
            jail.set_env("ZHIMA__REUSE__MAX_AGE_DAYS", "3650");
            assert!(load(None).is_ok());
            for hostile in ["3651", "-1", "1.5", "thirty", "99999999999", ""] {
                jail.set_env("ZHIMA__REUSE__MAX_AGE_DAYS", hostile);
                let error = load(None).expect_err(hostile).to_string();
                assert!(error.contains("reuse.max_age_days"), "{hostile}: {error}");
            }
            jail.set_env("ZHIMA__REUSE__MAX_AGE_DAYS", "0");
            jail.create_file("c.toml", "[reuse]\nmax_age_days = 7\n")?;
            let settings = load(Some(Path::new("c.toml"))).expect("file");
            assert_eq!(settings.reuse.max_age_days, 0, "the environment wins");
            Ok(())
        });
    }

    #[test]
    fn spend_defaults_to_no_limit_and_env_overrides_it() {
        Jail::expect_with(|jail| {
            let settings = load(None).expect("defaults are valid");
            assert!(!settings.spend.is_limited());
            assert_eq!(settings.spend.warn_ratio, 0.8);
            jail.set_env("ZHIMA__SPEND__DAILY_LIMIT", "100");
            jail.set_env("ZHIMA__SPEND__WARN_RATIO", "0.5");
            let settings = load(None).expect("valid");
            assert_eq!(settings.spend.daily_limit, 100);
            assert_eq!(settings.spend.warn_ratio, 0.5);
            Ok(())
        });
    }

    #[test]
    fn bad_spend_values_are_refused_naming_the_key() {
        let cases = [
            ("ZHIMA__SPEND__WARN_RATIO", "0", "spend.warn_ratio"),
            ("ZHIMA__SPEND__WARN_RATIO", "1.5", "spend.warn_ratio"),
            ("ZHIMA__SPEND__WARN_RATIO", "-0.2", "spend.warn_ratio"),
            ("ZHIMA__SPEND__WARN_RATIO", "NaN", "spend.warn_ratio"),
            ("ZHIMA__SPEND__DAILY_LIMIT", "-1", "daily_limit"),
            ("ZHIMA__SPEND__DAILY_LIMIT", "lots", "daily_limit"),
            (
                "ZHIMA__SPEND__DAILY_LIMIT",
                "1000000001",
                "spend.daily_limit",
            ),
            (
                "ZHIMA__SPEND__RECHECK_INTERVAL_S",
                "0",
                "spend.recheck_interval_s",
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
            jail.set_env("ZHIMA__SPEND__WARN_RATIO", "1");
            assert!(load(None).is_ok());
            Ok(())
        });
    }
}
