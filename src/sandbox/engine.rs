//! One gateway request from raw bytes to HTTP answer: parameters, fault plan,
//! gateway checks, call-rate cap, business checks, ledger, signing.
//!
//! All shared state sits behind one mutex that is never held across an await
//! or while signing (RSA dominates the cost of a request), so the lock is held
//! for microseconds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::answers::{self, Contact};
use super::certs::{self, CertCheck, SandboxCertificates};
use super::codes::{BusinessError, GatewayError};
use super::faults::{FaultDice, FaultPlan, Faults, SandboxReply, SystemErrorStyle};
use super::gateway::{self, Call, Query, Reply};
use super::ledger::{self, BillRow, Ledger, Recorded, SlidingWindow, Stats};
use super::params::RequestParams;
use super::reply::{render_node, render_signed_by};
use super::{AppAuthToken, SandboxApp, SandboxClock, SandboxConfig};
use crate::upstream::signing::{Charset, PrivateKey};

/// What the HTTP layer sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
}

impl HttpAnswer {
    /// Alipay answers `text/html;charset=…` even though the body is JSON.
    fn gateway(charset: Charset, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: format!("text/html;charset={}", charset.as_str()),
            body,
        }
    }

    /// What a load balancer in front of the gateway sends when it fails.
    fn outage(status: u16) -> Self {
        let body = format!("<html><body><h1>{status}</h1>upstream unavailable</body></html>");
        Self {
            status,
            content_type: "text/html".to_owned(),
            body: body.into_bytes(),
        }
    }
}

struct State {
    ledger: Ledger,
    faults: Faults,
    dice: FaultDice,
    /// Scripted replies, consumed one per gateway request before any rate.
    script: VecDeque<SandboxReply>,
    admitted: SlidingWindow,
    /// Certificate mode (None: every app signs in key mode).
    certs: Option<SandboxCertificates>,
    cert_downloads: std::collections::BTreeMap<String, u64>,
}

impl State {
    /// The call-rate cap counts admitted calls only, so a throttled client
    /// that keeps calling is let through again once it slows down.
    fn admit(&mut self, now: Instant) -> bool {
        let Some(cap) = self.faults.qps_cap else {
            return true;
        };
        if self.admitted.count_at(now) >= usize::try_from(cap).unwrap_or(usize::MAX) {
            return false;
        }
        self.admitted.push(now);
        true
    }
}

/// The answer decided for a request, and whether it was billed just now.
struct Decision {
    reply: Reply,
    is_billed: bool,
}

impl Decision {
    fn unbilled(reply: Reply) -> Self {
        Self {
            reply,
            is_billed: false,
        }
    }
}

pub(crate) struct Engine {
    apps: Vec<SandboxApp>,
    tokens: Vec<AppAuthToken>,
    private_key: PrivateKey,
    product_code: String,
    validity: Duration,
    clock: SandboxClock,
    /// Mixed into every `biz_no` so that two sandbox runs do not mint the same.
    nonce: u64,
    state: Mutex<State>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// Counts a request as in flight until dropped, also when the client goes away.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(engine: &'a Engine) -> Self {
        let now = engine.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        engine.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(&engine.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    pub(crate) fn new(config: SandboxConfig) -> Self {
        let state = State {
            ledger: Ledger::default(),
            faults: config.faults,
            dice: FaultDice::new(config.seed),
            script: VecDeque::new(),
            admitted: SlidingWindow::default(),
            certs: config.certificates,
            cert_downloads: std::collections::BTreeMap::new(),
        };
        Self {
            apps: config.apps,
            tokens: config.app_auth_tokens,
            private_key: config.private_key,
            product_code: config.product_code,
            validity: config.validity,
            clock: config.clock,
            nonce: rand::random(),
            state: Mutex::new(state),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one `gateway.do` request: the query string and the form body
    /// (empty for GET), both raw.
    pub(crate) async fn handle(&self, query: &[u8], body: &[u8]) -> HttpAnswer {
        let _in_flight = InFlight::enter(self);
        let params = RequestParams::parse(query, body);
        if params.get("method") == Some(certs::DOWNLOAD_METHOD) && self.lock().certs.is_some() {
            return self.download(&params);
        }
        let checked = gateway::check_request(&params, &self.apps, &self.tokens)
            .and_then(|call| self.check_certs(&params, call));
        let plan = self.admit_request(checked.as_ref().ok());
        let answer = self.answer(checked, &plan);
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        answer
    }

    /// Counts the request (and, for a call that passed the gateway's checks,
    /// its transaction_id) and draws its fate.
    fn admit_request(&self, call: Option<&Call>) -> FaultPlan {
        let transaction_id = call.and_then(gateway::peek_transaction_id);
        let mut state = self.lock();
        state.ledger.count_request(Instant::now(), transaction_id);
        let faults = state.faults.clone();
        let drawn = state.dice.draw(&faults);
        let plan = match state.script.pop_front() {
            Some(reply) => reply.plan(&faults),
            None => drawn,
        };
        if plan.is_slow {
            state.ledger.count_slow_answer();
        }
        plan
    }

    fn answer(&self, checked: Result<Call, Box<Reply>>, plan: &FaultPlan) -> HttpAnswer {
        if let Some(status) = plan.http_5xx_before {
            return self.outage(status);
        }
        let decision = self.decide(checked, plan, Instant::now(), self.clock.now());
        let tamper = plan
            .broken_sign
            .filter(|_| decision.reply.sign_type.is_some());
        let (key, cert_sn) = self.signer();
        let body = match render_signed_by(&decision.reply, &key, tamper, cert_sn.as_deref()) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(error.message = %error, "sandbox could not render an answer");
                return self.outage(500);
            }
        };
        if let Some(status) = plan.http_5xx_after_billing.filter(|_| decision.is_billed) {
            return self.outage(status);
        }
        let mut state = self.lock();
        if let Some(key) = decision.reply.node.error_key() {
            state.ledger.count_error(key);
        }
        if tamper.is_some() {
            state.ledger.count_broken_signature();
        }
        HttpAnswer::gateway(decision.reply.charset, body)
    }

    /// The key that signs answers, and in certificate mode its certificate's SN.
    fn signer(&self) -> (PrivateKey, Option<String>) {
        let state = self.lock();
        match state.certs.as_ref().and_then(SandboxCertificates::current) {
            Some(current) => (current.key.clone(), Some(current.sn.clone())),
            None => (self.private_key.clone(), None),
        }
    }

    /// Certificate mode's checks of `app_cert_sn` and `alipay_root_cert_sn`,
    /// for apps registered with a certificate.
    fn check_certs(&self, params: &RequestParams, call: Call) -> Result<Call, Box<Reply>> {
        let state = self.lock();
        let Some(certs) = &state.certs else {
            return Ok(call);
        };
        let error = match certs.check(
            &call.app_id,
            params.get("app_cert_sn"),
            params.get("alipay_root_cert_sn"),
        ) {
            CertCheck::Fine => return Ok(call),
            CertCheck::MissingAppCertSn => GatewayError::MissingAppCertSn,
            CertCheck::AppCertNotExist => GatewayError::AppCertNotExist,
            CertCheck::InvalidRootCertSn => GatewayError::InvalidRootCertSn,
        };
        Err(Box::new(call.reply(error.node())))
    }

    /// `alipay.open.app.alipaycert.download`: a known app's signed request
    /// for a certificate the sandbox has served.
    fn download(&self, params: &RequestParams) -> HttpAnswer {
        let charset = params.charset.effective();
        let sign_type = params
            .get("sign_type")
            .and_then(|value| value.parse().ok())
            .unwrap_or(crate::upstream::signing::SignType::Rsa2);
        let app = params
            .get("app_id")
            .and_then(|id| self.apps.iter().find(|app| app.app_id == id));
        let signed_ok = app.is_some_and(|app| {
            let verified = crate::upstream::signing::string_to_sign(params.iter());
            app.public_key
                .verify(
                    sign_type,
                    &charset.encode(&verified),
                    params.get("sign").unwrap_or_default(),
                )
                .is_ok()
        });
        let requested = params
            .get("biz_content")
            .and_then(|biz| serde_json::from_str::<serde_json::Value>(biz).ok())
            .and_then(|biz| biz.get("alipay_cert_sn")?.as_str().map(str::to_owned));
        let decided = {
            let mut state = self.lock();
            state.ledger.count_request(Instant::now(), None);
            let found = state.certs.as_ref().and_then(|certs| {
                let current = certs.current()?.clone();
                let content = requested.as_deref().and_then(|sn| certs.download(sn));
                Some((current, content))
            });
            if let (Some((_, Some(_))), Some(sn), true) = (&found, &requested, signed_ok) {
                *state.cert_downloads.entry(sn.clone()).or_default() += 1;
            }
            found
        };
        let Some((current, content)) = decided else {
            return self.outage(500);
        };
        let node = match (app, signed_ok, content) {
            (None, _, _) => GatewayError::InvalidAppId.node_json(),
            (Some(_), false, _) => GatewayError::InvalidSignature {
                verified: String::new(),
            }
            .node_json(),
            (Some(_), true, None) => serde_json::json!({
                "code": "40004",
                "msg": "Business Failed",
                "sub_code": "isv.alipay-cert-not-exist",
                "sub_msg": "支付宝公钥证书不存在",
            }),
            (Some(_), true, Some(content)) => serde_json::json!({
                "code": "10000",
                "msg": "Success",
                "alipay_cert_content": content,
            }),
        };
        let body = render_node(
            &node.to_string(),
            certs::DOWNLOAD_NODE,
            Some(sign_type),
            charset,
            &current.key,
            None,
            Some(&current.sn),
        );
        match body {
            Ok(body) => HttpAnswer::gateway(charset, body),
            Err(error) => {
                tracing::error!(error.message = %error, "sandbox could not render an answer");
                self.outage(500)
            }
        }
    }

    pub(crate) fn alipay_cert_sn(&self) -> Option<String> {
        self.lock()
            .certs
            .as_ref()
            .and_then(|certs| certs.current_sn().map(str::to_owned))
    }

    /// `POST /admin/rotate-alipay-cert`: the SN of the new certificate.
    pub(crate) fn rotate_alipay_cert(&self, untrusted: bool) -> Result<String, String> {
        // Issuing (RSA key generation) happens outside the request path's
        // lock-holding code, but under the lock: rotations are rare.
        let mut state = self.lock();
        let Some(certs) = state.certs.as_mut() else {
            return Err("the sandbox is not in certificate mode".into());
        };
        certs.rotate(untrusted).map_err(|error| error.to_string())
    }

    fn outage(&self, status: u16) -> HttpAnswer {
        self.lock().ledger.count_error(format!("HTTP_{status}"));
        HttpAnswer::outage(status)
    }

    fn decide(
        &self,
        checked: Result<Call, Box<Reply>>,
        plan: &FaultPlan,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Decision {
        let call = match checked {
            Ok(call) => call,
            Err(reply) => return Decision::unbilled(*reply),
        };
        let business = gateway::check_business(&call, &self.product_code);
        let mut state = self.lock();
        if plan.is_throttled || !state.admit(now) {
            return Decision::unbilled(call.reply(GatewayError::CallLimited.node()));
        }
        let query = match business {
            Ok(query) => query,
            Err(error) => return Decision::unbilled(call.reply(error.node())),
        };
        match plan.system_error {
            Some(SystemErrorStyle::Gateway20000) => {
                Decision::unbilled(call.reply(GatewayError::ServiceUnavailable.node()))
            }
            Some(SystemErrorStyle::Business40004) => {
                Decision::unbilled(call.reply(BusinessError::SystemError.node()))
            }
            None => self.record(&mut state.ledger, &call, &query, now, wall),
        }
    }

    fn record(
        &self,
        ledger: &mut Ledger,
        call: &Call,
        query: &Query,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Decision {
        let transaction_id = query.transaction_id.as_str();
        let day = wall.with_timezone(&ledger::utc8()).date_naive();
        let contact = Contact {
            cert_no: &query.contact.cert_no,
            relation_phone: &query.contact.relation_phone,
            relation_name: &query.contact.relation_name,
            has_relation: query.contact.has_relation,
        };
        let key = (call.app_id.clone(), transaction_id.to_owned());
        let recorded = ledger.record(key, &query.canonical, now, self.validity, wall, |counter| {
            let biz_no = answers::biz_no(day, &call.app_id, transaction_id, self.nonce, counter);
            answers::success_node(contact, biz_no)
        });
        match recorded {
            Ok(Recorded::Billed(node)) => Decision {
                reply: call.reply(node),
                is_billed: true,
            },
            Ok(Recorded::Repeated(node)) => Decision::unbilled(call.reply(node)),
            Err(error) => Decision::unbilled(call.reply(error.node())),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.lock().ledger.stats();
        stats.in_flight = self.in_flight.load(Ordering::SeqCst);
        stats.max_in_flight = self.max_in_flight.load(Ordering::SeqCst);
        stats.cert_downloads = self.lock().cert_downloads.clone();
        stats
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Applies `change` to the current faults under the lock (so two
    /// concurrent changes both take effect) and keeps the result if it is Ok.
    pub(crate) fn update_faults<E>(
        &self,
        change: impl FnOnce(&Faults) -> Result<Faults, E>,
    ) -> Result<Faults, E> {
        let mut state = self.lock();
        let faults = change(&state.faults)?;
        state.faults = faults.clone();
        Ok(faults)
    }

    pub(crate) fn respond_next(&self, count: usize, reply: SandboxReply) {
        self.lock().script.extend(std::iter::repeat_n(reply, count));
    }

    pub(crate) fn bill_rows(&self, date: Option<chrono::NaiveDate>) -> Vec<BillRow> {
        self.lock().ledger.bill_rows(date)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    #[tokio::test]
    async fn random_bytes_always_get_an_answer_and_never_panic() {
        let engine = Engine::new(SandboxConfig::with_test_keys().unwrap());
        let mut rng = StdRng::seed_from_u64(99);
        let prefix = b"method=zhima.credit.relation.query&app_id=2014072300007148&sign_type=RSA2&sign=YQ%3D%3D&";
        for round in 0..3_000 {
            let mut query: Vec<u8> = if round % 2 == 0 {
                prefix.to_vec()
            } else {
                Vec::new()
            };
            query.extend((0..rng.random_range(0..80)).map(|_| rng.random::<u8>()));
            let body: Vec<u8> = (0..rng.random_range(0..120))
                .map(|_| rng.random())
                .collect();
            let answer = engine.handle(&query, &body).await;
            assert_eq!(answer.status, 200);
            assert!(answer.body.starts_with(b"{\"") && answer.body.ends_with(b"}"));
        }
        assert_eq!(engine.stats().requests, 3_000);
        assert_eq!(engine.stats().in_flight, 0);
    }
}
