//! Keeping the keys current while the worker runs: `SIGHUP` reads every key
//! and certificate file again (a key rotation is an upload to Alipay plus a
//! file swap here, without a restart), and every hour, at start and after each
//! reload, each configured certificate's remaining validity is published as
//! `zhima_certificate_expiry_seconds{role}`, with a WARN once one ends within
//! [`EXPIRY_WARNING`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Expiry, UpstreamClient};
use crate::config::UpstreamSettings;
use crate::telemetry::metric;

/// A certificate ending within this is logged at WARN.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// How often the expiry gauge and warning are refreshed.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Installs the SIGHUP handler and starts the hourly expiry check; both run
/// until the process exits.
pub fn spawn_key_maintenance(
    client: Arc<UpstreamClient>,
    settings: UpstreamSettings,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    report_expiries(
        &client.certificate_expiries(),
        chrono::Utc::now().timestamp(),
    );
    let reloading = Arc::clone(&client);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reloading.reload(&settings) {
                Ok(()) => {
                    tracing::info!("SIGHUP: keys and certificates reloaded");
                    report_expiries(
                        &reloading.certificate_expiries(),
                        chrono::Utc::now().timestamp(),
                    );
                }
                Err(error) => tracing::error!(
                    error.message = %error,
                    error.cause_chain = ?error,
                    "SIGHUP: the new keys or certificates are unusable; the ones loaded \
                     before stay in use"
                ),
            }
        }
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            report_expiries(
                &client.certificate_expiries(),
                chrono::Utc::now().timestamp(),
            );
        }
    });
    Ok(())
}

/// Sets the gauge per role (the earliest end among certificates of one
/// role) and warns for each certificate ending within [`EXPIRY_WARNING`].
/// Returns the roles warned about.
pub(crate) fn report_expiries(expiries: &[Expiry], now: i64) -> Vec<&'static str> {
    let mut earliest: BTreeMap<&'static str, &Expiry> = BTreeMap::new();
    for expiry in expiries {
        earliest
            .entry(expiry.role)
            .and_modify(|seen| {
                if expiry.not_after < seen.not_after {
                    *seen = expiry;
                }
            })
            .or_insert(expiry);
    }
    let warning = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    let mut warned = Vec::new();
    for (role, expiry) in earliest {
        let remaining = expiry.not_after.saturating_sub(now);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(metric::CERTIFICATE_EXPIRY_SECONDS, metric::ROLE => role)
            .set(remaining as f64);
        if remaining < warning {
            tracing::warn!(
                role,
                cert_sn = %expiry.sn,
                days_left = remaining / 86_400,
                "a configured certificate ends within 30 days: get the new one from the \
                 Alipay open platform, replace the file and send SIGHUP"
            );
            warned.push(role);
        }
    }
    warned
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn expiry(role: &'static str, not_after: i64) -> Expiry {
        Expiry {
            role,
            sn: format!("{role}-{not_after}"),
            not_after,
        }
    }

    #[test]
    fn only_certificates_ending_within_30_days_are_warned_about() {
        let day = 86_400;
        let now = 1_000 * day;
        let expiries = [
            expiry("app", now + 29 * day),
            expiry("alipay", now + 31 * day),
            expiry("root", now + 400 * day),
            expiry("root", now - day),
        ];
        assert_eq!(report_expiries(&expiries, now), vec!["app", "root"]);
        assert!(report_expiries(&[expiry("app", now + 31 * day)], now).is_empty());
    }
}
