//! The Alipay OpenAPI client: builds a signed `gateway.do` request, posts it,
//! verifies the signed answer and classifies it.
//!
//! The gateway layer is generic over `GatewayMethod` (method name, business
//! parameters, answer), so a sibling Zhima method is a small addition. This is
//! the only HTTP client in the crate; it never retries by itself (the worker
//! decides, from [`UpstreamError::class`]) and never logs keys, signatures or PII.

pub mod cert;
pub mod response;
pub mod signing;

mod classify;
mod redact;
pub mod reload;
mod trust;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::UpstreamSettings;
use crate::job::RelationQuery;
use signing::{Charset, KeyError, PrivateKey, PublicKey, SignType, SigningError};

pub use classify::{ErrorClass, GatewayFault};
pub(crate) use redact::PiiRedactor;
pub use trust::Expiry;
#[cfg(feature = "fuzzing")]
pub(crate) use wire::encode_pairs;
pub(crate) use wire::timestamp_utc8;

/// One OpenAPI method: its name and the shapes of its business parameters and
/// of its successful answer.
pub(crate) trait GatewayMethod {
    const METHOD: &'static str;
    type BizContent: Serialize;
    type Answer: DeserializeOwned;
}

/// `zhima.credit.relation.query` (联系人验证).
pub(crate) struct RelationQueryMethod;

impl GatewayMethod for RelationQueryMethod {
    const METHOD: &'static str = "zhima.credit.relation.query";
    type BizContent = RelationQuery;
    type Answer = RelationAnswer;
}

/// `alipay.open.app.alipaycert.download`: a certificate of Alipay's by SN
/// (certificate mode, after Alipay rotated its certificate).
struct CertDownloadMethod;

#[derive(Serialize)]
struct CertDownloadQuery {
    alipay_cert_sn: String,
}

#[derive(serde::Deserialize)]
struct CertDownloadAnswer {
    code: Option<String>,
    sub_code: Option<String>,
    alipay_cert_content: Option<String>,
}

impl GatewayMethod for CertDownloadMethod {
    const METHOD: &'static str = "alipay.open.app.alipaycert.download";
    type BizContent = CertDownloadQuery;
    type Answer = CertDownloadAnswer;
}

/// Not a valid transaction_id (`-` is outside `[A-Za-z0-9_]`), so the
/// upstream can never bill it.
const PROBE_TRANSACTION_ID: &str = "zhima-worker-probe";

/// The relation query with a deliberately invalid transaction_id.
struct ProbeMethod;

#[derive(Serialize)]
struct ProbeQuery {
    product_code: String,
    transaction_id: &'static str,
    cert_no: &'static str,
    name: &'static str,
    relation_phone: &'static str,
    relation_name: &'static str,
}

impl GatewayMethod for ProbeMethod {
    const METHOD: &'static str = RelationQueryMethod::METHOD;
    type BizContent = ProbeQuery;
    type Answer = RelationAnswer;
}

/// The business fields of a successful answer. `relation_rank` and `recency`
/// are open code lists: unknown values are kept as they came.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RelationAnswer {
    pub biz_no: String,
    pub relation_rank: String,
    #[serde(default)]
    pub(crate) relation_info: Option<RelationInfo>,
    #[serde(default, deserialize_with = "wire::number_or_string")]
    pub(crate) relation_score: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct RelationInfo {
    pub(crate) recency: Option<String>,
}

impl RelationAnswer {
    pub(crate) fn recency(&self) -> Option<&str> {
        self.relation_info.as_ref()?.recency.as_deref()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the gateway did not answer within the timeout")]
    Timeout,
    #[error("could not reach the gateway")]
    Connect(#[source] reqwest::Error),
    #[error("the gateway answered HTTP {status}")]
    Http { status: u16 },
    #[error("the gateway answered HTTP {status}, a redirect; not followed")]
    Redirect { status: u16 },
    #[error(
        "the gateway's answer is longer than upstream.max_response_bytes ({limit} bytes); \
         the rest was not read"
    )]
    TooLarge { limit: u64 },
    #[error("the gateway's answer could not be read: {reason}")]
    Malformed { reason: String },
    #[error("the answer's signature is {reason} (code {code:?}); its content was not used")]
    Unverified {
        reason: String,
        code: Option<String>,
    },
    #[error("{0}")]
    Gateway(Box<GatewayFault>),
    #[error("{0}")]
    SignatureRejected(Box<SignatureMismatch>),
    #[error("could not sign the request")]
    Signing(#[from] SigningError),
    #[error("could not encode the business parameters")]
    Encode(#[source] serde_json::Error),
    #[error(
        "the answer is signed by Alipay certificate {sn}, which could not be fetched \
         (alipay.open.app.alipaycert.download): {reason}"
    )]
    CertificateFetch { sn: String, reason: String },
    #[error(
        "the answer is signed by Alipay certificate {sn}, and the certificate downloaded \
         for it is refused: {reason}. Nothing signed with it was trusted: check that \
         upstream.alipay_root_cert_path is Alipay's current root bundle \
         (alipayRootCert.crt from the open platform console) and upstream.gateway_url \
         the real gateway"
    )]
    CertificateUntrusted { sn: String, reason: String },
}

/// The gateway refused our signature; both strings to sign, rebuilt from
/// masked values, so a human can spot the difference without seeing PII.
#[derive(Debug, thiserror::Error)]
#[error(
    "the gateway rejected our request signature: check upstream.private_key_path against \
     the app public key registered for the app, and the charset.\n  our string to sign:     \
     {ours}\n  gateway's string to sign: {theirs}"
)]
pub struct SignatureMismatch {
    pub(crate) fault: GatewayFault,
    pub ours: String,
    pub theirs: String,
}

impl SignatureMismatch {
    /// Both strings rebuilt from masked values; the gateway's message, which
    /// quotes its string verbatim, is masked too (it reaches `Debug` output).
    fn masked(fault: &GatewayFault, ours: &str, redactor: &PiiRedactor) -> Self {
        let theirs = fault.gateway_string_to_sign().map_or_else(
            || "(not echoed)".into(),
            |text| redactor.mask_string_to_sign(&text),
        );
        let mut fault = fault.clone();
        fault.sub_msg = fault
            .sub_msg
            .map(|message| redactor.mask_string_to_sign(&message));
        Self {
            fault,
            ours: redactor.mask_string_to_sign(ours),
            theirs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("upstream.private_key_path is unusable")]
    PrivateKey(#[source] KeyError),
    #[error("upstream.alipay_public_key_path is unusable")]
    PublicKey(#[source] KeyError),
    #[error(
        "upstream.private_key_path {} is accessible by group or others (mode {mode:03o}): \
         run `chmod 600` on it, or set upstream.allow_shared_key_file = true if the key is \
         not secret",
        path.display()
    )]
    SharedKeyFile { path: PathBuf, mode: u32 },
    #[error("upstream.proxy is not a usable proxy URL")]
    Proxy(#[source] reqwest::Error),
    #[error("could not build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("{key} is unusable")]
    CertificateFile {
        key: &'static str,
        #[source]
        source: cert::CertError,
    },
    #[error("{key}: {reason}")]
    CertificateCheck { key: &'static str, reason: String },
}

/// What one HTTP exchange with the gateway produced: the facts the ledger
/// (`upstream_calls`) records, and the classified outcome.
#[derive(Debug)]
pub struct CallReport<A> {
    pub http_status: Option<u16>,
    pub(crate) elapsed: Duration,
    pub code: Option<String>,
    pub(crate) sub_code: Option<String>,
    /// The raw body, decoded from the request charset, kept as evidence.
    pub raw_body: Option<String>,
    pub outcome: Result<A, UpstreamError>,
}

/// The keys (and certificates) of one load: what signs our requests and
/// what verifies the gateway's answers.
struct Credentials {
    private_key: PrivateKey,
    alipay: AlipayKeys,
}

impl Credentials {
    /// Reads and checks every key and certificate file the settings name.
    fn load(settings: &UpstreamSettings) -> Result<Self, ClientSetupError> {
        if !settings.allow_shared_key_file {
            refuse_shared_key_file(&settings.private_key_path)?;
        }
        let private_key = PrivateKey::from_file(&settings.private_key_path)
            .map_err(ClientSetupError::PrivateKey)?;
        let alipay = match settings.certificate_paths() {
            Some(paths) => AlipayKeys::Certificates(Box::new(trust::CertMode::load(
                paths,
                &private_key,
                chrono::Utc::now().timestamp(),
            )?)),
            None => AlipayKeys::Key(
                PublicKey::all_from_file(&settings.alipay_public_key_path)
                    .map_err(ClientSetupError::PublicKey)?,
            ),
        };
        Ok(Self {
            private_key,
            alipay,
        })
    }
}

/// What verifies the gateway's answers.
enum AlipayKeys {
    /// Key mode: the Alipay public key; during a rotation several (the file
    /// holds several PEM blocks), any one verifying is accepted.
    Key(Vec<PublicKey>),
    /// Certificate mode: Alipay's certificates, by SN.
    Certificates(Box<trust::CertMode>),
}

/// A pooled, signing gateway client. Cheap to share behind an `Arc`.
pub struct UpstreamClient {
    http: reqwest::Client,
    gateway_url: Url,
    app_id: String,
    /// Swapped whole by [`UpstreamClient::reload`] (SIGHUP).
    credentials: std::sync::RwLock<Arc<Credentials>>,
    /// Certificate mode: where downloaded certificates are shared.
    cert_store: std::sync::OnceLock<crate::store::JobStore>,
    sign_type: SignType,
    charset: Charset,
    app_auth_token: Option<SecretString>,
    max_response_bytes: u64,
}

impl UpstreamClient {
    /// Loads both keys now, so a wrong key is a start-up error, not a failed job.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ClientSetupError> {
        let credentials = Credentials::load(settings)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .timeout(settings.timeout())
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("zhima-worker/", env!("CARGO_PKG_VERSION")));
        builder = match settings.proxy() {
            Some(proxy) => {
                builder.proxy(reqwest::Proxy::all(proxy).map_err(ClientSetupError::Proxy)?)
            }
            None => builder.no_proxy(),
        };
        Ok(Self {
            http: builder.build().map_err(ClientSetupError::Http)?,
            gateway_url: settings.gateway_url.clone(),
            app_id: settings.app_id.clone(),
            credentials: std::sync::RwLock::new(Arc::new(credentials)),
            cert_store: std::sync::OnceLock::new(),
            sign_type: settings.sign_type,
            charset: settings.charset,
            app_auth_token: settings
                .app_auth_token()
                .map(|token| SecretString::from(token.to_owned())),
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// Certificate mode: the database where downloaded Alipay certificates
    /// are shared by the replicas and kept across restarts. Without it they
    /// are kept in memory only. Key mode: nothing to do.
    pub fn attach_certificate_store(&self, store: crate::store::JobStore) {
        let _ = self.cert_store.set(store);
    }

    /// The configured certificates' ends of validity (empty in key mode).
    pub fn certificate_expiries(&self) -> Vec<Expiry> {
        match &self.credentials().alipay {
            AlipayKeys::Key(_) => Vec::new(),
            AlipayKeys::Certificates(mode) => mode.expiries().to_vec(),
        }
    }

    /// Reads every key and certificate file again (SIGHUP) with the same
    /// checks as at start-up; on any error the keys in use stay. Calls in
    /// flight finish with the keys they started with.
    pub fn reload(&self, settings: &UpstreamSettings) -> Result<(), ClientSetupError> {
        let credentials = Arc::new(Credentials::load(settings)?);
        *self
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credentials;
        Ok(())
    }

    fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(
            &self
                .credentials
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// One call of `zhima.credit.relation.query`.
    pub async fn query_relation(&self, query: &RelationQuery) -> CallReport<RelationAnswer> {
        self.call::<RelationQueryMethod>(query, || PiiRedactor::for_query(query))
            .await
    }

    /// Checks our set-up without billing anything: a query whose
    /// transaction_id breaks the documented pattern is refused by the upstream
    /// after the signature, app and contract checks. A signed, verified
    /// business refusal proves keys, app id and contract are fine.
    pub async fn probe(&self, product_code: &str) -> Result<(), String> {
        let probe = ProbeQuery {
            product_code: product_code.to_owned(),
            transaction_id: PROBE_TRANSACTION_ID,
            cert_no: "640202199007164686",
            name: "张三",
            relation_phone: "15843991158",
            relation_name: "李四",
        };
        let report = self.call::<ProbeMethod>(&probe, PiiRedactor::default).await;
        match report.outcome {
            Ok(_) => Ok(()),
            Err(error) => match error.class() {
                ErrorClass::Permanent => Ok(()),
                _ => Err(error.to_string()),
            },
        }
    }

    /// One signed call of any method. `redactor` (built only if the gateway
    /// rejects our signature, so never on the hot path) masks the PII in our
    /// string-to-sign before it can reach an error message. The span is at
    /// DEBUG: at the default INFO it costs nothing per call, and the job's
    /// `process_job` span already names the transaction.
    #[tracing::instrument(name = "upstream_call", level = "debug", skip_all, fields(method = M::METHOD))]
    pub(crate) async fn call<M: GatewayMethod>(
        &self,
        biz: &M::BizContent,
        redactor: impl FnOnce() -> PiiRedactor,
    ) -> CallReport<M::Answer> {
        let started = Instant::now();
        let request = match self.build_request::<M>(biz) {
            Ok(request) => request,
            Err(error) => return CallReport::failed_before_sending(error),
        };
        let sent = self
            .http
            .post(request.url)
            .header(reqwest::header::CONTENT_TYPE, request.content_type)
            .body(request.body)
            .send()
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(error) => return CallReport::transport(error, started.elapsed()),
        };
        let status = reply.status().as_u16();
        log_trace_id(&reply);
        if reply.status().is_redirection() {
            return CallReport::refused_before_reading(
                status,
                UpstreamError::Redirect { status },
                started.elapsed(),
            );
        }
        let body = match read_body(reply, self.max_response_bytes).await {
            Ok(body) => body,
            Err(BodyError::Transport(error)) => {
                return CallReport::transport(error, started.elapsed());
            }
            Err(BodyError::TooLarge) => {
                let error = UpstreamError::TooLarge {
                    limit: self.max_response_bytes,
                };
                return CallReport::refused_before_reading(status, error, started.elapsed());
            }
        };
        let alipay_key = match self.answer_key(&body, M::METHOD).await {
            Ok(key) => key,
            Err(error) => {
                let mut report =
                    CallReport::refused_before_reading(status, error, started.elapsed());
                report.raw_body = Some(self.charset.decode(&body).into_owned());
                return report;
            }
        };
        let elapsed = started.elapsed();
        let mut report = classify::read_answer::<M::Answer>(
            &body,
            status,
            M::METHOD,
            self.charset,
            self.sign_type,
            &alipay_key,
        );
        report.elapsed = elapsed;
        if let Err(UpstreamError::Gateway(fault)) = &report.outcome
            && fault.is_signature_rejected()
        {
            let mismatch = SignatureMismatch::masked(fault, &request.string_to_sign, &redactor());
            report.outcome = Err(UpstreamError::SignatureRejected(Box::new(mismatch)));
            report.raw_body = None;
        }
        report
    }

    fn build_request<M: GatewayMethod>(
        &self,
        biz: &M::BizContent,
    ) -> Result<wire::SignedRequest, UpstreamError> {
        let credentials = self.credentials();
        let biz_content = serde_json::to_string(biz).map_err(UpstreamError::Encode)?;
        let timestamp = timestamp_utc8(chrono::Utc::now());
        let params = wire::OutgoingParams {
            app_id: &self.app_id,
            method: M::METHOD,
            charset: self.charset,
            sign_type: self.sign_type,
            timestamp: &timestamp,
            app_auth_token: self.app_auth_token.as_ref().map(|t| t.expose_secret()),
            biz_content: &biz_content,
            cert_sns: match &credentials.alipay {
                AlipayKeys::Key(_) => None,
                AlipayKeys::Certificates(mode) => {
                    Some((mode.app_cert_sn.as_str(), mode.root_sn.as_str()))
                }
            },
        };
        wire::sign_request(&self.gateway_url, &params, &credentials.private_key)
    }

    /// The key that verifies this answer. Certificate mode: the certificate
    /// named by the answer's `alipay_cert_sn` (fetched once if unknown), or the
    /// configured one when the answer names none (unsigned gateway errors). A
    /// body that cannot be scanned gets the configured key, and `read_answer`
    /// reports it as malformed.
    async fn answer_key(&self, body: &[u8], method: &str) -> Result<PublicKey, UpstreamError> {
        let credentials = self.credentials();
        let mode = match &credentials.alipay {
            AlipayKeys::Key(keys) => {
                return self.verifying_key(keys, body, method).ok_or_else(|| {
                    UpstreamError::Unverified {
                        reason: "not checkable: no Alipay public key is loaded".into(),
                        code: None,
                    }
                });
            }
            AlipayKeys::Certificates(mode) => mode,
        };
        let configured = || {
            mode.configured_key()
                .ok_or_else(|| UpstreamError::Unverified {
                    reason: "not checkable: the configured Alipay certificate's key is missing"
                        .into(),
                    code: None,
                })
        };
        let sn = match response::top_level_string(body, "alipay_cert_sn", self.charset) {
            Ok(Some(sn)) => sn,
            Ok(None) | Err(_) => return configured(),
        };
        if !cert::looks_like_sn(&sn) {
            return Err(UpstreamError::Unverified {
                reason: format!(
                    "not checkable: alipay_cert_sn is not a certificate SN ({} characters)",
                    sn.chars().count()
                ),
                code: None,
            });
        }
        if let Some(key) = mode.known_key(&sn) {
            return Ok(key);
        }
        self.fetch_certificate(mode, &sn).await
    }

    /// Key mode: the one key, or during a rotation the first of the keys that
    /// verifies the answer (the first key if none does, so that
    /// `read_answer` reports the failure).
    fn verifying_key(&self, keys: &[PublicKey], body: &[u8], method: &str) -> Option<PublicKey> {
        let fallback = || keys.first().cloned();
        if keys.len() < 2 {
            fallback()
        } else {
            response::extract(body, &response::response_node_name(method), self.charset)
                .ok()
                .and_then(|extracted| {
                    keys.iter()
                        .find(|key| {
                            response::verify(&extracted, key, self.sign_type)
                                == response::Verification::Verified
                        })
                        .cloned()
                })
                .or_else(fallback)
        }
    }

    /// An Alipay certificate this process does not know: from the database if
    /// another replica (or an earlier run) stored it, else downloaded, checked
    /// to chain to a configured root, stored. One fetch at a time per process
    /// and, on PostgreSQL, per SN across replicas.
    ///
    /// A fetch that failed is not tried again for the same SN within
    /// [`trust::FETCH_RETRY_AFTER`]: the answers meanwhile fail the same way
    /// without a call (downloads do not go through the rate limiter).
    async fn fetch_certificate(
        &self,
        mode: &trust::CertMode,
        sn: &str,
    ) -> Result<PublicKey, UpstreamError> {
        let mut last_failure = mode.fetching.lock().await;
        if let Some(key) = mode.known_key(sn) {
            return Ok(key);
        }
        if let Some(failed) = last_failure
            .as_ref()
            .and_then(|failed| failed.still_for(sn))
        {
            return Err(failed);
        }
        let fetched = self.fetch_certificate_now(mode, sn).await;
        *last_failure = fetched
            .as_ref()
            .err()
            .and_then(|error| trust::FailedFetch::of(sn, error));
        fetched
    }

    async fn fetch_certificate_now(
        &self,
        mode: &trust::CertMode,
        sn: &str,
    ) -> Result<PublicKey, UpstreamError> {
        let now = chrono::Utc::now().timestamp();
        let untrusted = |reason: trust::Refusal| UpstreamError::CertificateUntrusted {
            sn: sn.to_owned(),
            reason: reason.to_string(),
        };
        let mut fetch = match self.cert_store.get() {
            Some(store) => match store.begin_certificate_fetch(sn).await {
                Ok(fetch) => Some(fetch),
                Err(error) => {
                    tracing::warn!(
                        cert_sn = sn,
                        error.message = %error,
                        "could not lock the certificate fetch in the database; downloading anyway"
                    );
                    None
                }
            },
            None => None,
        };
        if let Some(fetch) = fetch.as_mut()
            && let Ok(Some(pem)) = fetch.stored().await
        {
            let leaf = mode.accept(sn, pem.as_bytes(), now).map_err(untrusted)?;
            tracing::info!(cert_sn = sn, "Alipay certificate loaded from the database");
            return mode.remember(&leaf).map_err(untrusted);
        }
        let pem = self.download_certificate(mode, sn, now).await?;
        let leaf = mode.accept(sn, pem.as_bytes(), now).map_err(untrusted)?;
        let key = mode.remember(&leaf).map_err(untrusted)?;
        tracing::info!(cert_sn = sn, "Alipay certificate downloaded and trusted");
        if let Some(fetch) = fetch {
            let not_after = chrono::DateTime::from_timestamp(leaf.not_after(), 0)
                .unwrap_or_else(chrono::Utc::now);
            if let Err(error) = fetch.store(&pem, not_after).await {
                tracing::warn!(
                    cert_sn = sn,
                    error.message = %error,
                    "could not store the downloaded Alipay certificate; it is used from memory"
                );
            }
        }
        Ok(key)
    }

    /// `alipay.open.app.alipaycert.download`; returns the PEM text after
    /// checking that it chains (so a refused download is named as such) and
    /// that the download answer itself verifies.
    async fn download_certificate(
        &self,
        mode: &trust::CertMode,
        sn: &str,
        now: i64,
    ) -> Result<String, UpstreamError> {
        use base64::Engine as _;
        let failed = |reason: String| UpstreamError::CertificateFetch {
            sn: sn.to_owned(),
            reason,
        };
        let request = self.build_request::<CertDownloadMethod>(&CertDownloadQuery {
            alipay_cert_sn: sn.to_owned(),
        })?;
        let sent = self
            .http
            .post(request.url)
            .header(reqwest::header::CONTENT_TYPE, request.content_type)
            .body(request.body)
            .send()
            .await
            .map_err(|error| {
                // Without the URL: its query string carries our signature.
                failed(format!(
                    "could not reach the gateway: {}",
                    error.without_url()
                ))
            })?;
        let status = sent.status().as_u16();
        if status != 200 {
            return Err(failed(format!("the gateway answered HTTP {status}")));
        }
        let body = read_body(sent, self.max_response_bytes)
            .await
            .map_err(|_| failed("the answer could not be read whole".into()))?;
        let node = response::response_node_name(CertDownloadMethod::METHOD);
        let extracted = response::extract(&body, &node, self.charset)
            .map_err(|error| failed(format!("unreadable answer: {error}")))?;
        let answer: CertDownloadAnswer =
            serde_json::from_slice(extracted.content).map_err(|e| failed(e.to_string()))?;
        if answer.code.as_deref() != Some("10000") {
            return Err(failed(format!(
                "code {:?}, sub_code {:?}",
                answer.code.unwrap_or_default(),
                answer.sub_code.unwrap_or_default()
            )));
        }
        let content = answer
            .alipay_cert_content
            .ok_or_else(|| failed("no alipay_cert_content".into()))?;
        let pem_bytes = base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|_| failed("alipay_cert_content is not base64".into()))?;
        let pem = String::from_utf8(pem_bytes)
            .map_err(|_| failed("alipay_cert_content is not PEM text".into()))?;
        let leaf = mode.accept(sn, pem.as_bytes(), now).map_err(|reason| {
            UpstreamError::CertificateUntrusted {
                sn: sn.to_owned(),
                reason: reason.to_string(),
            }
        })?;
        // The download answer is signed too: by the new certificate itself,
        // or by one already trusted.
        let signer = response::top_level_string(&body, "alipay_cert_sn", self.charset)
            .ok()
            .flatten();
        let key = match signer.as_deref() {
            Some(signer) if signer == sn => leaf.public_key().ok(),
            Some(signer) => mode.known_key(signer),
            None => mode.configured_key(),
        };
        let verified = key.is_some_and(|key| {
            response::verify(&extracted, &key, self.sign_type) == response::Verification::Verified
        });
        if !verified {
            return Err(failed(
                "the download answer's signature does not verify".into(),
            ));
        }
        Ok(pem)
    }
}

impl<A> CallReport<A> {
    fn failed_before_sending(error: UpstreamError) -> Self {
        Self {
            http_status: None,
            elapsed: Duration::ZERO,
            code: None,
            sub_code: None,
            raw_body: None,
            outcome: Err(error),
        }
    }

    /// An HTTP answer whose body we chose not to read (a redirect, or too long).
    fn refused_before_reading(status: u16, error: UpstreamError, elapsed: Duration) -> Self {
        Self {
            http_status: Some(status),
            elapsed,
            ..Self::failed_before_sending(error)
        }
    }

    fn transport(error: reqwest::Error, elapsed: Duration) -> Self {
        let error = if error.is_timeout() {
            UpstreamError::Timeout
        } else {
            UpstreamError::Connect(error)
        };
        Self {
            elapsed,
            ..Self::failed_before_sending(error)
        }
    }
}

/// ssh's rule for identity files: a private key that group or others can
/// access is treated as already leaked. A file that cannot be inspected is
/// left for the key loader to report.
fn refuse_shared_key_file(path: &Path) -> Result<(), ClientSetupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ClientSetupError::SharedKeyFile {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
    }
    Ok(())
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads the body chunk by chunk and gives up (dropping the connection) as
/// soon as it would exceed `limit`, so a hostile or broken gateway cannot make
/// us buffer an endless answer. A declared Content-Length over the limit fails
/// before reading anything.
async fn read_body(mut reply: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let declared = reply.content_length().unwrap_or(0);
    if declared > limit {
        return Err(BodyError::TooLarge);
    }
    let capacity = usize::try_from(declared.min(limit).min(64 * 1024)).unwrap_or(0);
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = reply.chunk().await.map_err(BodyError::Transport)? {
        let length = u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX);
        if length > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn log_trace_id(reply: &reqwest::Response) {
    let headers = reply.headers();
    let trace_id = headers
        .get("trace_id")
        .or_else(|| headers.get("alipay-trace-id"))
        .and_then(|value| value.to_str().ok());
    if let Some(trace_id) = trace_id {
        tracing::debug!(
            gateway.trace_id = trace_id,
            http.status = reply.status().as_u16()
        );
    }
}
