//! The sandbox gateway: a faithful stand-in for Alipay's `gateway.do` for
//! `zhima.credit.relation.query`, used by the tests, `make run` and load tests.
//!
//! It verifies request signatures with each app's public key, runs the gateway's
//! checks in the real order ([`gateway`]), answers deterministically per contact
//! ([`answers`]), signs answers over their exact bytes ([`reply`]), keeps the
//! transaction_id rules and the bill ([`ledger`]), and injects faults on demand
//! ([`faults`]). State lives in memory only: a restart forgets every recorded
//! transaction_id (so a retried id is billed again and never EXPIRED or REPEAT),
//! the bill, the statistics and any fault settings changed at run time.
//!
//! It must not share code paths with the client it tests beyond the signing
//! primitives and field validation rules, or a shared bug would pass unnoticed.

pub mod answers;
pub mod certs;
pub mod codes;
pub(crate) mod engine;
pub mod faults;
pub mod gateway;
pub mod ledger;
pub(crate) mod params;
pub mod reply;
pub(crate) mod server;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use certs::{SandboxCertError, SandboxCertificates};
pub use faults::{Faults, FaultsError, SandboxReply, SystemErrorStyle};
pub use ledger::{BillRow, Stats, TransactionStats};
pub use server::MergeFaultsError;

use crate::upstream::signing::{KeyError, PrivateKey, PublicKey};
use engine::Engine;

/// The product code of `zhima.credit.relation.query` (the seed's example value).
pub(crate) const DEFAULT_PRODUCT_CODE: &str = "w1010100001000001200";
/// The app id the default configuration uses (the seed's example).
pub const DEFAULT_APP_ID: &str = "2014072300007148";
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
/// About a day, as the seed says ("一般为1天").
pub(crate) const DEFAULT_VALIDITY: Duration = Duration::from_secs(86_400);
const TEST_APP_PUBLIC_KEY: &str = "config/keys/test_merchant_public.pem";
const TEST_SANDBOX_PRIVATE_KEY: &str = "config/keys/test_sandbox_private.pem";

#[derive(Debug)]
pub struct SandboxConfig {
    /// Port 0 picks a free port; [`RunningSandbox::addr`] has the real one.
    pub listen: SocketAddr,
    pub apps: Vec<SandboxApp>,
    /// Signs every answer (stands in for Alipay's platform key).
    pub(crate) private_key: PrivateKey,
    pub(crate) product_code: String,
    /// How long a transaction_id's first answer is replayed; after that the id
    /// is TRANSACTION_ID_EXPIRED.
    pub validity: Duration,
    pub faults: Faults,
    /// Makes fault decisions reproducible.
    pub seed: Option<u64>,
    /// ISV tokens the gateway accepts in `app_auth_token`; any other token is
    /// 20001 `aop.invalid-app-auth-token`.
    pub app_auth_tokens: Vec<AppAuthToken>,
    /// A connection that sends no complete request header within this is
    /// dropped ([`crate::health::HEADER_READ_TIMEOUT`], 10 s, unless a test
    /// needs a shorter one).
    pub header_read_timeout: Duration,
    /// The wall clock that dates bills and `biz_no`s.
    pub clock: SandboxClock,
    /// Certificate mode for the apps it names (None: key mode for all).
    pub certificates: Option<SandboxCertificates>,
}

/// Where the sandbox reads the time of billing. Tests pin it so that every
/// query lands on one statement day however long they run and whenever they
/// start (a real clock near midnight UTC+8 splits a run over two days).
/// Only the wall clock is pinned: transaction_id validity and rate caps keep
/// measuring real elapsed time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxClock {
    #[default]
    System,
    /// Every query is billed at this instant.
    Fixed(DateTime<Utc>),
}

impl SandboxClock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Fixed(at) => *at,
        }
    }
}

/// An `app_auth_token` the gateway accepts when `app_id` presents it.
#[derive(Clone, PartialEq, Eq)]
pub struct AppAuthToken {
    pub app_id: String,
    pub token: String,
}

/// The token itself is a credential: never printed.
impl std::fmt::Debug for AppAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuthToken")
            .field("app_id", &self.app_id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// An app the gateway knows, with the key that verifies its requests.
#[derive(Debug, Clone)]
pub struct SandboxApp {
    pub app_id: String,
    pub public_key: PublicKey,
    /// Without a product contract every query is NO_VALID_ARRANGEMENT.
    pub has_contract: bool,
}

impl SandboxConfig {
    /// The test keys under `config/keys/` (found from the working directory or
    /// the crate's directory) with the default app, on 127.0.0.1 port 0: what
    /// integration tests and `make run` want.
    pub fn with_test_keys() -> Result<Self, SandboxError> {
        let public_key = load(TEST_APP_PUBLIC_KEY, PublicKey::from_file)?;
        Ok(Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            apps: vec![SandboxApp {
                app_id: DEFAULT_APP_ID.to_owned(),
                public_key,
                has_contract: true,
            }],
            private_key: load(TEST_SANDBOX_PRIVATE_KEY, PrivateKey::from_file)?,
            product_code: DEFAULT_PRODUCT_CODE.to_owned(),
            validity: DEFAULT_VALIDITY,
            faults: Faults::default(),
            seed: None,
            app_auth_tokens: Vec::new(),
            header_read_timeout: crate::health::HEADER_READ_TIMEOUT,
            clock: SandboxClock::System,
            certificates: None,
        })
    }

    /// Certificate mode for the registered apps: issues a root bundle, an
    /// Alipay certificate and an app certificate per app (for the key file it
    /// was registered with) into `dir`. See [`SandboxCertificates::generate`].
    pub fn with_generated_certificates(
        mut self,
        dir: &Path,
        app_key_files: &[(String, PathBuf)],
    ) -> Result<Self, SandboxCertError> {
        self.certificates = Some(SandboxCertificates::generate(dir, app_key_files)?);
        Ok(self)
    }
}

/// The test app's public key file (for certificate mode's app certificate).
pub fn test_app_public_key_file() -> PathBuf {
    resolve(Path::new(TEST_APP_PUBLIC_KEY))
}

/// Relative paths are tried from the working directory first, then from the
/// crate's directory, so tests and benches work from any directory.
fn resolve(path: &Path) -> PathBuf {
    if path.is_relative() && !path.exists() {
        let in_crate = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if in_crate.exists() {
            return in_crate;
        }
    }
    path.to_owned()
}

fn load<T>(path: &str, read: impl Fn(&Path) -> Result<T, KeyError>) -> Result<T, SandboxError> {
    let path = resolve(Path::new(path));
    read(&path).map_err(|source| SandboxError::Key { path, source })
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not load the key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("invalid fault settings")]
    Faults(#[from] FaultsError),
}

/// A sandbox serving on its own task; dropping it stops the server too.
pub struct RunningSandbox {
    pub addr: SocketAddr,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Binds (port 0 allowed) and serves on the current tokio runtime.
pub async fn start(config: SandboxConfig) -> Result<RunningSandbox, SandboxError> {
    config.faults.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: config.listen,
        source,
    })?;
    let header_read_timeout = config.header_read_timeout;
    let engine = Arc::new(Engine::new(config));
    let (stop, stopped) = oneshot::channel::<()>();
    let app = server::router(Arc::clone(&engine));
    let task = tokio::spawn(crate::health::serve_http(
        listener,
        app,
        header_read_timeout,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(RunningSandbox {
        addr,
        engine,
        stop: Some(stop),
        task: Some(task),
    })
}

impl RunningSandbox {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn gateway_url(&self) -> String {
        format!("http://{}/gateway.do", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Calls so far that named `transaction_id` in their biz_content.
    pub fn calls_for(&self, transaction_id: &str) -> u64 {
        self.stats()
            .transactions
            .get(transaction_id)
            .map_or(0, |t| t.calls)
    }

    /// Billed queries for `transaction_id` (0 or 1 per app).
    pub fn billed_for(&self, transaction_id: &str) -> u64 {
        self.stats()
            .transactions
            .get(transaction_id)
            .map_or(0, |t| t.billed)
    }

    pub fn faults(&self) -> Faults {
        self.engine.faults()
    }

    /// Takes effect for the next request. Rates are clamped into 0..=1 (NaN
    /// is 0); the admin endpoint rejects them instead.
    pub fn set_faults(&self, faults: Faults) {
        let clamp = |rate: f64| {
            if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            }
        };
        self.engine.set_faults(Faults {
            system_error_rate: clamp(faults.system_error_rate),
            http_5xx_before_rate: clamp(faults.http_5xx_before_rate),
            http_5xx_after_billing_rate: clamp(faults.http_5xx_after_billing_rate),
            slow_rate: clamp(faults.slow_rate),
            broken_sign_rate: clamp(faults.broken_sign_rate),
            ..faults
        });
    }

    /// The next `count` gateway requests get `reply`, in order, before any
    /// fault rate applies.
    pub fn respond_next(&self, count: usize, reply: SandboxReply) {
        self.engine.respond_next(count, reply);
    }

    /// Certificate mode: switches to a freshly issued Alipay certificate (from
    /// a root outside the bundle if `untrusted`) and returns its SN.
    pub fn rotate_alipay_cert(&self, untrusted: bool) -> Result<String, String> {
        self.engine.rotate_alipay_cert(untrusted)
    }

    /// Certificate mode: the SN of the certificate signing answers now.
    pub fn alipay_cert_sn(&self) -> Option<String> {
        self.engine.alipay_cert_sn()
    }

    /// The statement for one UTC+8 day, exactly as `GET /bill?date=` serves it.
    pub fn bill_csv(&self, date: NaiveDate) -> String {
        ledger::bill_csv(&self.engine.bill_rows(Some(date)))
    }

    pub fn bill_rows(&self) -> Vec<BillRow> {
        self.engine.bill_rows(None)
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `APP_ID=PUBLIC_KEY_FILE`, as given to `--app` and `--app-without-contract`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppFlag {
    pub(crate) app_id: String,
    pub(crate) public_key_file: PathBuf,
}

fn parse_app_flag(value: &str) -> Result<AppFlag, String> {
    match value.split_once('=') {
        Some((app_id, file)) if !app_id.trim().is_empty() && !file.trim().is_empty() => {
            Ok(AppFlag {
                app_id: app_id.trim().to_owned(),
                public_key_file: PathBuf::from(file.trim()),
            })
        }
        _ => Err(format!("expects APP_ID=PUBLIC_KEY_FILE, got `{value}`")),
    }
}

fn parse_token_flag(value: &str) -> Result<AppAuthToken, String> {
    match value.split_once('=') {
        Some((app_id, token)) if !app_id.trim().is_empty() && !token.trim().is_empty() => {
            Ok(AppAuthToken {
                app_id: app_id.trim().to_owned(),
                token: token.trim().to_owned(),
            })
        }
        _ => Err("expects APP_ID=TOKEN".to_owned()),
    }
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expects a probability from 0 to 1, got `{value}`")),
    }
}

fn parse_validity(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|seconds| *seconds > 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("expects a positive number of seconds, got `{value}`"))
}

/// Flags of `zhima-worker sandbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub(crate) listen: SocketAddr,
    /// A known app with a product contract (repeatable). Default: the test app.
    #[arg(long = "app", value_name = "APP_ID=PUBLIC_KEY_FILE", value_parser = parse_app_flag)]
    pub(crate) apps: Vec<AppFlag>,
    /// A known app without a product contract (repeatable): NO_VALID_ARRANGEMENT.
    #[arg(long = "app-without-contract", value_name = "APP_ID=PUBLIC_KEY_FILE", value_parser = parse_app_flag)]
    pub(crate) apps_without_contract: Vec<AppFlag>,
    /// An ISV token the gateway accepts from APP_ID in `app_auth_token`
    /// (repeatable); any other token is answered 20001.
    #[arg(long = "app-auth-token", value_name = "APP_ID=TOKEN", value_parser = parse_token_flag)]
    pub(crate) app_auth_tokens: Vec<AppAuthToken>,
    /// The sandbox's own private key, which signs its answers.
    #[arg(long, value_name = "FILE", default_value = TEST_SANDBOX_PRIVATE_KEY)]
    pub(crate) private_key: PathBuf,
    #[arg(long, default_value = DEFAULT_PRODUCT_CODE)]
    pub(crate) product_code: String,
    /// How long a transaction_id's first answer is replayed (fractions allowed).
    #[arg(long = "validity-s", value_name = "SECONDS", default_value = "86400", value_parser = parse_validity)]
    pub(crate) validity: Duration,
    /// Makes fault decisions reproducible.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) system_error_rate: f64,
    #[arg(long, value_enum, default_value_t = SystemErrorStyle::Gateway20000)]
    pub(crate) system_error_style: SystemErrorStyle,
    /// HTTP 502/503 before processing.
    #[arg(long = "http-5xx-before-rate", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) http_5xx_before_rate: f64,
    /// HTTP 502/503 after the query was billed (the answer is lost).
    #[arg(long = "http-5xx-after-billing-rate", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) http_5xx_after_billing_rate: f64,
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) slow_rate: f64,
    /// Added to a slow answer.
    #[arg(long, default_value_t = 3000)]
    pub(crate) slow_ms: u64,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// Share of answers whose signature is flipped or stripped.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) broken_sign_rate: f64,
    /// Calls per second above which the gateway answers 40005.
    #[arg(long)]
    pub(crate) qps_cap: Option<u32>,
    /// Certificate mode: generate a root bundle (an RSA and an EC root), an
    /// Alipay certificate and its key, and a certificate for every registered
    /// app's key into DIR, and serve certificate mode for those apps.
    #[arg(long, value_name = "DIR")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// Certificate mode: the root bundle (its RSA roots give the root SN).
    #[arg(long, value_name = "FILE")]
    pub(crate) root_cert: Option<PathBuf>,
    /// Certificate mode: the Alipay certificate answers are signed under.
    #[arg(long, value_name = "FILE")]
    pub(crate) alipay_cert: Option<PathBuf>,
    /// Certificate mode: the private key of --alipay-cert.
    #[arg(long, value_name = "FILE")]
    pub(crate) alipay_cert_key: Option<PathBuf>,
    /// Certificate mode for APP_ID, whose app_cert_sn is CERT_FILE's SN (repeatable).
    #[arg(long = "app-cert", value_name = "APP_ID=CERT_FILE", value_parser = parse_app_cert_flag)]
    pub(crate) app_certs: Vec<AppFlag>,
}

fn parse_app_cert_flag(value: &str) -> Result<AppFlag, String> {
    parse_app_flag(value).map_err(|_| format!("expects APP_ID=CERT_FILE, got `{value}`"))
}

impl SandboxArgs {
    fn faults(&self) -> Faults {
        Faults {
            system_error_rate: self.system_error_rate,
            system_error_style: self.system_error_style,
            http_5xx_before_rate: self.http_5xx_before_rate,
            http_5xx_after_billing_rate: self.http_5xx_after_billing_rate,
            slow_rate: self.slow_rate,
            slow_ms: self.slow_ms,
            latency_ms: self.latency_ms,
            broken_sign_rate: self.broken_sign_rate,
            qps_cap: self.qps_cap,
        }
    }

    /// Without `--app`, the test app (unless `--app-without-contract` names it).
    pub fn to_config(&self) -> anyhow::Result<SandboxConfig> {
        let key_path = resolve(&self.private_key);
        let private_key = PrivateKey::from_file(&key_path)
            .with_context(|| format!("reading --private-key {}", key_path.display()))?;
        Ok(SandboxConfig {
            listen: self.listen,
            apps: self.load_apps()?,
            private_key,
            product_code: self.product_code.clone(),
            validity: self.validity,
            faults: self.faults(),
            seed: self.seed,
            app_auth_tokens: self.app_auth_tokens.clone(),
            header_read_timeout: crate::health::HEADER_READ_TIMEOUT,
            clock: SandboxClock::System,
            certificates: self.certificates()?,
        })
    }

    /// `--cert-dir` (generate) or the four certificate flags (files); None
    /// without any of them.
    fn certificates(&self) -> anyhow::Result<Option<SandboxCertificates>> {
        let files = [&self.root_cert, &self.alipay_cert, &self.alipay_cert_key];
        let given = files.iter().filter(|file| file.is_some()).count();
        if let Some(dir) = &self.cert_dir {
            if given > 0 || !self.app_certs.is_empty() {
                anyhow::bail!(
                    "--cert-dir generates every certificate: give it without --root-cert, \
                     --alipay-cert, --alipay-cert-key and --app-cert"
                );
            }
            let apps: Vec<(String, PathBuf)> = self
                .app_key_files()
                .into_iter()
                .map(|flag| (flag.app_id, resolve(&flag.public_key_file)))
                .collect();
            return Ok(Some(
                SandboxCertificates::generate(dir, &apps).with_context(|| {
                    format!("generating certificates into --cert-dir {}", dir.display())
                })?,
            ));
        }
        match (&self.root_cert, &self.alipay_cert, &self.alipay_cert_key) {
            (None, None, None) if self.app_certs.is_empty() => Ok(None),
            (Some(root), Some(alipay), Some(key)) if !self.app_certs.is_empty() => {
                let known: Vec<String> = self
                    .app_key_files()
                    .into_iter()
                    .map(|flag| flag.app_id)
                    .collect();
                if let Some(unknown) = self.app_certs.iter().find(|f| !known.contains(&f.app_id)) {
                    anyhow::bail!(
                        "--app-cert {}: no such app (register it with --app or --app-without-contract)",
                        unknown.app_id
                    );
                }
                let app_certs: Vec<(String, PathBuf)> = self
                    .app_certs
                    .iter()
                    .map(|flag| (flag.app_id.clone(), resolve(&flag.public_key_file)))
                    .collect();
                Ok(Some(SandboxCertificates::from_files(
                    &resolve(root),
                    &resolve(alipay),
                    &resolve(key),
                    &app_certs,
                )?))
            }
            _ => anyhow::bail!(
                "certificate mode needs --root-cert, --alipay-cert, --alipay-cert-key and at \
                 least one --app-cert together (or --cert-dir alone)"
            ),
        }
    }

    /// The registered apps' `APP_ID=PUBLIC_KEY_FILE`, the default app included.
    fn app_key_files(&self) -> Vec<AppFlag> {
        let default_app = AppFlag {
            app_id: DEFAULT_APP_ID.to_owned(),
            public_key_file: TEST_APP_PUBLIC_KEY.into(),
        };
        let wants_default = self.apps.is_empty()
            && !self
                .apps_without_contract
                .iter()
                .any(|flag| flag.app_id == DEFAULT_APP_ID);
        self.apps
            .iter()
            .chain(wants_default.then_some(&default_app))
            .chain(self.apps_without_contract.iter())
            .cloned()
            .collect()
    }

    fn load_apps(&self) -> anyhow::Result<Vec<SandboxApp>> {
        let default_app = AppFlag {
            app_id: DEFAULT_APP_ID.to_owned(),
            public_key_file: TEST_APP_PUBLIC_KEY.into(),
        };
        let wants_default = self.apps.is_empty()
            && !self
                .apps_without_contract
                .iter()
                .any(|flag| flag.app_id == DEFAULT_APP_ID);
        let with_contract = self
            .apps
            .iter()
            .chain(wants_default.then_some(&default_app))
            .map(|f| (f, true));
        let without_contract = self.apps_without_contract.iter().map(|f| (f, false));
        with_contract
            .chain(without_contract)
            .map(|(flag, has_contract)| {
                let path = resolve(&flag.public_key_file);
                let public_key = PublicKey::from_file(&path).with_context(|| {
                    format!(
                        "reading the public key of app {} from {}",
                        flag.app_id,
                        path.display()
                    )
                })?;
                Ok(SandboxApp {
                    app_id: flag.app_id.clone(),
                    public_key,
                    has_contract,
                })
            })
            .collect()
    }
}

/// `zhima-worker sandbox`: prints `listening on http://ADDR` as the first line
/// of stdout (scripts wait for it to learn the port), then serves until
/// SIGINT or SIGTERM.
pub(crate) async fn run_cli(args: SandboxArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    // Handlers go in before the address is printed: whoever reads that line
    // may signal at once, and the default action would kill us uncleanly.
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sandbox = start(config)
        .await
        .context("starting the sandbox gateway")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{}", sandbox.addr).context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
    sandbox.shutdown().await;
    Ok(())
}
