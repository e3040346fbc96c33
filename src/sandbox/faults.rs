//! Injected faults: what can go wrong, how often, and the seeded dice that
//! decide it for each request.
//!
//! Every request draws the same number of random values whatever the rates, so
//! with `--seed` the n-th request meets the same fate in every run with the same
//! settings. This module decides; `engine` applies the decisions.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// How an injected SYSTEM_ERROR looks on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SystemErrorStyle {
    /// 20000 `isp.unknow-error`, as in the seed's error example.
    #[default]
    #[serde(rename = "gateway-20000")]
    #[value(name = "gateway-20000")]
    Gateway20000,
    /// 40004 `SYSTEM_ERROR`, the seed's business error code.
    #[serde(rename = "business-40004")]
    #[value(name = "business-40004")]
    Business40004,
}

/// Fault settings; rates are probabilities per request in `0.0..=1.0`. The
/// admin endpoint reads them whole and merges the fields a `PUT` gives into
/// the current ones; fields missing from a whole settings object are zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answered as SYSTEM_ERROR after the business checks; nothing is billed.
    pub system_error_rate: f64,
    pub system_error_style: SystemErrorStyle,
    /// HTTP 502/503 before anything is processed.
    pub http_5xx_before_rate: f64,
    /// HTTP 502/503 after a fresh query was recorded and billed: the answer is
    /// lost, and only a retry with the same transaction_id gets it back unbilled.
    pub http_5xx_after_billing_rate: f64,
    /// Share of answers delayed by `slow_ms` on top of `latency_ms`.
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// Added to every gateway answer.
    pub latency_ms: u64,
    /// Share of signed answers whose `sign` is flipped or stripped.
    pub broken_sign_rate: f64,
    /// Above this many admitted calls in any one-second window: 40005.
    pub qps_cap: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("fault setting `{field}` must be a number from 0 to 1, got {value}")]
pub struct FaultsError {
    pub(crate) field: &'static str,
    pub(crate) value: f64,
}

impl Faults {
    /// Rejects rates outside `0..=1` (NaN included) so a typo is not silently
    /// read as "always" or "never".
    pub(crate) fn validate(&self) -> Result<(), FaultsError> {
        let rates = [
            ("system_error_rate", self.system_error_rate),
            ("http_5xx_before_rate", self.http_5xx_before_rate),
            (
                "http_5xx_after_billing_rate",
                self.http_5xx_after_billing_rate,
            ),
            ("slow_rate", self.slow_rate),
            ("broken_sign_rate", self.broken_sign_rate),
        ];
        match rates
            .into_iter()
            .find(|(_, value)| !(0.0..=1.0).contains(value))
        {
            Some((field, value)) => Err(FaultsError { field, value }),
            None => Ok(()),
        }
    }
}

/// How a broken signature is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignTamper {
    /// One base64 character changed: still decodes, never verifies.
    Flipped,
    /// The `sign` member left out.
    Stripped,
}

/// The fate of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    pub(crate) http_5xx_before: Option<u16>,
    pub(crate) system_error: Option<SystemErrorStyle>,
    pub(crate) http_5xx_after_billing: Option<u16>,
    pub(crate) is_slow: bool,
    pub(crate) delay: Duration,
    pub(crate) broken_sign: Option<SignTamper>,
    /// Answer 40005 whatever the call rate (scripted replies only).
    pub(crate) is_throttled: bool,
}

/// A scripted fate for the next gateway request(s), for tests that need an
/// exact sequence (`respond_next(2, SandboxReply::SystemError)`) rather than a
/// rate. A scripted request still draws its dice, so seeded runs stay aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxReply {
    /// SYSTEM_ERROR in the configured `system_error_style`; nothing billed.
    SystemError,
    /// HTTP 503 before processing; nothing billed.
    Unavailable,
    /// HTTP 502 after a fresh query was billed (the answer is lost).
    LostAfterBilling,
    /// 40005 `isv.app-call-limited`.
    Throttled,
    /// The answer with its `sign` flipped (still base64, never verifies).
    BrokenSignature,
    /// The answer with its `sign` left out.
    Unsigned,
    /// The answer, this much later.
    Slow(Duration),
}

impl SandboxReply {
    /// The plan this reply stands for, given the current settings.
    pub(crate) fn plan(self, faults: &Faults) -> FaultPlan {
        let latency = Duration::from_millis(faults.latency_ms);
        let none = FaultPlan {
            delay: latency,
            ..FaultPlan::default()
        };
        match self {
            Self::SystemError => FaultPlan {
                system_error: Some(faults.system_error_style),
                ..none
            },
            Self::Unavailable => FaultPlan {
                http_5xx_before: Some(503),
                ..none
            },
            Self::LostAfterBilling => FaultPlan {
                http_5xx_after_billing: Some(502),
                ..none
            },
            Self::Throttled => FaultPlan {
                is_throttled: true,
                ..none
            },
            Self::BrokenSignature => FaultPlan {
                broken_sign: Some(SignTamper::Flipped),
                ..none
            },
            Self::Unsigned => FaultPlan {
                broken_sign: Some(SignTamper::Stripped),
                ..none
            },
            Self::Slow(slow) => FaultPlan {
                is_slow: true,
                delay: latency.saturating_add(slow),
                ..none
            },
        }
    }
}

/// The seeded source of every fault decision.
#[derive(Debug)]
pub(crate) struct FaultDice {
    rng: StdRng,
}

impl FaultDice {
    /// Without a seed the decisions differ from run to run.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { rng }
    }

    /// Draws seven values per request whatever the rates (see the module doc).
    pub(crate) fn draw(&mut self, faults: &Faults) -> FaultPlan {
        let rolls: [f64; 5] = std::array::from_fn(|_| self.rng.random::<f64>());
        let status = if self.rng.random::<bool>() { 502 } else { 503 };
        let tamper = if self.rng.random::<bool>() {
            SignTamper::Flipped
        } else {
            SignTamper::Stripped
        };
        let is_slow = rolls[3] < faults.slow_rate;
        let slow = if is_slow { faults.slow_ms } else { 0 };
        FaultPlan {
            http_5xx_before: (rolls[0] < faults.http_5xx_before_rate).then_some(status),
            system_error: (rolls[1] < faults.system_error_rate)
                .then_some(faults.system_error_style),
            http_5xx_after_billing: (rolls[2] < faults.http_5xx_after_billing_rate)
                .then_some(status),
            is_slow,
            delay: Duration::from_millis(faults.latency_ms.saturating_add(slow)),
            broken_sign: (rolls[4] < faults.broken_sign_rate).then_some(tamper),
            is_throttled: false,
        }
    }
}

/// Changes one character of a base64 signature to another base64 character.
pub(crate) fn flip_sign(sign: &str) -> String {
    let middle = sign.len() / 2;
    sign.char_indices()
        .map(|(index, ch)| match (index == middle, ch) {
            (true, 'A') => 'B',
            (true, _) => 'A',
            (false, ch) => ch,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plans() {
        let faults = Faults {
            system_error_rate: 0.5,
            broken_sign_rate: 0.5,
            ..Faults::default()
        };
        let mut a = FaultDice::new(Some(42));
        let mut b = FaultDice::new(Some(42));
        for _ in 0..100 {
            assert_eq!(a.draw(&faults), b.draw(&faults));
        }
    }

    #[test]
    fn zero_rates_never_fire_and_full_rates_always_do() {
        let mut dice = FaultDice::new(Some(1));
        assert_eq!(dice.draw(&Faults::default()), FaultPlan::default());
        let all = Faults {
            system_error_rate: 1.0,
            http_5xx_before_rate: 1.0,
            http_5xx_after_billing_rate: 1.0,
            slow_rate: 1.0,
            slow_ms: 5,
            latency_ms: 2,
            broken_sign_rate: 1.0,
            ..Faults::default()
        };
        let plan = dice.draw(&all);
        assert!(plan.http_5xx_before.is_some() && plan.system_error.is_some());
        assert!(plan.http_5xx_after_billing.is_some() && plan.broken_sign.is_some());
        assert_eq!(plan.delay, Duration::from_millis(7));
    }

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        let faults = Faults {
            slow_rate: 1.5,
            ..Faults::default()
        };
        assert_eq!(faults.validate().unwrap_err().field, "slow_rate");
        let faults = Faults {
            broken_sign_rate: f64::NAN,
            ..Faults::default()
        };
        assert!(faults.validate().is_err());
    }

    #[test]
    fn a_flipped_sign_differs_in_one_character() {
        let flipped = flip_sign("QUJDRA==");
        assert_ne!(flipped, "QUJDRA==");
        assert_eq!(flipped.len(), 8);
    }
}
