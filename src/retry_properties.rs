//! Property tests of the retry schedule (mounted from `retry.rs` as
//! `retry::properties`): for any configuration that start-up accepts, every
//! schedule the policy can draw fits inside the transaction_id window the
//! processor enforces (`UpstreamSettings::safe_call_window`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Decision, FailureKind};
use crate::config::{Settings, defaults};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `[retry]` and the upstream's window, from small to beyond anything sane.
fn settings() -> impl Strategy<Value = Settings> {
    (
        1..=600_000u64,
        0..=86_400_000u64,
        1..=40u32,
        60..=7 * 86_400u64,
        0.0..1.0f64,
    )
        .prop_map(|(initial, extra, attempts, validity, margin_share)| {
            let mut settings = defaults();
            settings.retry.initial_delay_ms = initial;
            settings.retry.max_delay_ms = initial + extra;
            settings.retry.max_attempts = NonZeroU32::new(attempts).unwrap();
            settings.upstream.transaction_validity_s = validity;
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let margin = (validity as f64 * margin_share) as u64;
            settings.upstream.transaction_margin_s = margin;
            settings
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_accepted_retry_schedule_fits_inside_the_transaction_window(
        settings in settings(),
        seed in any::<u64>(),
    ) {
        prop_assume!(settings.validate().is_ok());
        let Ok(policy) = settings.retry_policy() else {
            return Ok(());
        };
        let window = settings.upstream.safe_call_window();
        let worst = policy.worst_case_schedule();
        prop_assert!(worst <= window, "worst case {worst:?} outside the window {window:?}");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut waited = Duration::ZERO;
        let mut attempts = 1;
        while let Decision::RetryAfter(delay) =
            policy.decide(attempts, FailureKind::Transient, &mut rng)
        {
            prop_assert!(policy.tiers().contains(&delay), "{delay:?} is not a tier");
            waited += delay;
            attempts += 1;
        }
        prop_assert_eq!(attempts, settings.retry.max_attempts.get());
        prop_assert!(waited <= worst, "drew {waited:?}, worst case {worst:?}");
    }
}

/// Found by the property above: with a margin over half the validity, a
/// schedule within half the validity still outlived the window the
/// processor allows calls in, so late retries could only fail
/// `TRANSACTION_WINDOW_EXCEEDED`.
#[test]
fn a_retry_schedule_longer_than_validity_minus_margin_is_refused_at_start_up() {
    let mut settings = defaults();
    settings.upstream.transaction_validity_s = 86_400;
    settings.upstream.transaction_margin_s = 72_000;
    settings.retry.initial_delay_ms = 1_000;
    settings.retry.max_delay_ms = 3_600_000;
    settings.retry.max_attempts = NonZeroU32::new(20).unwrap();
    // 1 + 2 + … + 2048 s, then seven retries at the 1 h cap: 29 295 s, over
    // the 4 h window (24 h - 20 h) but within half of 24 h.
    let worst = super::RetryPolicy::new(
        Duration::from_millis(1_000),
        Duration::from_millis(3_600_000),
        20,
    )
    .unwrap()
    .worst_case_schedule();
    assert!(
        worst < Duration::from_secs(43_200),
        "within half the validity"
    );
    assert!(
        worst > settings.upstream.safe_call_window(),
        "outside the window"
    );
    let error = settings.retry_policy().unwrap_err().to_string();
    assert!(error.contains("retry.max_attempts"), "{error}");
    assert!(error.contains("transaction_margin_s"), "{error}");

    settings.upstream.transaction_margin_s = 3_600;
    assert!(settings.retry_policy().is_ok());
}
