//! The sandbox's memory: transaction_id records, the bill, and the statistics.
//!
//! The first successful answer per (app_id, transaction_id) is recorded and
//! billed; a later call with the same id gets that answer back (unbilled) while
//! it is valid and its business parameters match. Everything here is in memory:
//! a restart forgets records, bill and statistics. No clock is read here; callers
//! pass `Instant`s (for validity) and wall-clock times (for the bill).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::codes::{BusinessError, Node};

/// What `GET /stats` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to `/gateway.do`, whatever its fate.
    pub requests: u64,
    /// Queries billed (first successful answers).
    pub billed: u64,
    /// Recorded answers returned again for the same transaction_id, unbilled.
    pub unbilled_repeats: u64,
    /// Non-success answers by `code:sub_code`, and `HTTP_502`/`HTTP_503`.
    pub errors: BTreeMap<String, u64>,
    pub broken_signatures: u64,
    pub slow_answers: u64,
    /// Per transaction_id (as named in biz_content): calls, and how many billed.
    pub transactions: BTreeMap<String, TransactionStats>,
    /// The most requests seen in any sliding one-second window.
    pub max_requests_per_second: u64,
    pub in_flight: u64,
    pub(crate) max_in_flight: u64,
    /// Certificate mode: `alipay.open.app.alipaycert.download` answers that
    /// delivered a certificate, by SN.
    #[serde(default)]
    pub cert_downloads: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionStats {
    pub calls: u64,
    pub billed: u64,
}

/// One line of the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    pub biz_no: String,
    pub transaction_id: String,
    pub(crate) app_id: String,
    pub billed_at: DateTime<Utc>,
}

/// What a query gets from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// A fresh answer, recorded and billed now.
    Billed(Node),
    /// The recorded answer, returned again without billing.
    Repeated(Node),
}

#[derive(Debug)]
struct Record {
    first_at: Instant,
    canonical: Map<String, Value>,
    node: Node,
}

/// Counts requests in the last second, ending at each arrival: the maximum of
/// those counts is the maximum over every one-second window.
#[derive(Debug, Default)]
pub(crate) struct SlidingWindow {
    arrivals: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Forgets arrivals a second or more old and returns how many remain.
    pub(crate) fn count_at(&mut self, now: Instant) -> usize {
        while let Some(front) = self.arrivals.front() {
            if now.saturating_duration_since(*front) < Duration::from_secs(1) {
                break;
            }
            self.arrivals.pop_front();
        }
        self.arrivals.len()
    }

    pub(crate) fn push(&mut self, now: Instant) {
        self.arrivals.push_back(now);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    records: HashMap<(String, String), Record>,
    bill: Vec<BillRow>,
    stats: Stats,
    window: SlidingWindow,
}

impl Ledger {
    /// Counts an arriving request, and its transaction_id when it names one.
    pub(crate) fn count_request(&mut self, now: Instant, transaction_id: Option<String>) {
        self.stats.requests += 1;
        self.window.push(now);
        let in_window = u64::try_from(self.window.count_at(now)).unwrap_or(u64::MAX);
        self.stats.max_requests_per_second = self.stats.max_requests_per_second.max(in_window);
        if let Some(id) = transaction_id {
            self.stats.transactions.entry(id).or_default().calls += 1;
        }
    }

    pub(crate) fn count_error(&mut self, key: String) {
        *self.stats.errors.entry(key).or_default() += 1;
    }

    pub(crate) fn count_broken_signature(&mut self) {
        self.stats.broken_signatures += 1;
    }

    pub(crate) fn count_slow_answer(&mut self) {
        self.stats.slow_answers += 1;
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Applies the transaction_id rules: expired, repeated with other
    /// parameters, replayed, or new (then `answer` makes the node from the
    /// `biz_no` and the query is billed at `billed_at`).
    pub(crate) fn record(
        &mut self,
        key: (String, String),
        canonical: &Map<String, Value>,
        now: Instant,
        validity: Duration,
        billed_at: DateTime<Utc>,
        answer: impl FnOnce(u64) -> Node,
    ) -> Result<Recorded, BusinessError> {
        if let Some(record) = self.records.get(&key) {
            if now.saturating_duration_since(record.first_at) > validity {
                return Err(BusinessError::TransactionIdExpired);
            }
            if record.canonical != *canonical {
                return Err(BusinessError::TransactionIdRepeat);
            }
            self.stats.unbilled_repeats += 1;
            return Ok(Recorded::Repeated(record.node.clone()));
        }
        let node = answer(self.stats.billed + 1);
        self.bill_query(&key, &node, billed_at);
        let record = Record {
            first_at: now,
            canonical: canonical.clone(),
            node: node.clone(),
        };
        self.records.insert(key, record);
        Ok(Recorded::Billed(node))
    }

    fn bill_query(
        &mut self,
        (app_id, transaction_id): &(String, String),
        node: &Node,
        billed_at: DateTime<Utc>,
    ) {
        self.stats.billed += 1;
        self.stats
            .transactions
            .entry(transaction_id.clone())
            .or_default()
            .billed += 1;
        self.bill.push(BillRow {
            biz_no: node.biz_no.clone().unwrap_or_default(),
            transaction_id: transaction_id.clone(),
            app_id: app_id.clone(),
            billed_at,
        });
    }

    /// The statement for one UTC+8 day (every day when `None`), in billing order.
    pub(crate) fn bill_rows(&self, date: Option<NaiveDate>) -> Vec<BillRow> {
        self.bill
            .iter()
            .filter(|row| {
                date.is_none_or(|day| row.billed_at.with_timezone(&utc8()).date_naive() == day)
            })
            .cloned()
            .collect()
    }
}

/// China Standard Time, the zone of the bill, `biz_no` dates and timestamps.
pub(crate) fn utc8() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or(Utc.fix())
}

/// The statement as CSV: UTF-8, LF line ends, a header, `billed_at` in UTC+8.
pub(crate) fn bill_csv(rows: &[BillRow]) -> String {
    let mut out = String::from("biz_no,transaction_id,app_id,billed_at\n");
    for row in rows {
        let billed_at = row
            .billed_at
            .with_timezone(&utc8())
            .format("%Y-%m-%d %H:%M:%S");
        out.push_str(&format!(
            "{},{},{},{billed_at}\n",
            csv_field(&row.biz_no),
            csv_field(&row.transaction_id),
            csv_field(&row.app_id)
        ));
    }
    out
}

/// Quotes a field only when CSV requires it (app ids are configuration, so
/// they could in principle hold a comma or quote).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn node(biz_no: &str) -> Node {
        let mut node = BusinessError::SystemError.node();
        node.biz_no = Some(biz_no.to_owned());
        node
    }

    #[test]
    fn the_sliding_window_counts_the_last_second_only() {
        let mut window = SlidingWindow::default();
        let start = Instant::now();
        for ms in [0, 100, 900, 999] {
            window.push(start + Duration::from_millis(ms));
        }
        assert_eq!(window.count_at(start + Duration::from_millis(999)), 4);
        assert_eq!(window.count_at(start + Duration::from_millis(1_000)), 3);
        assert_eq!(window.count_at(start + Duration::from_millis(1_950)), 1);
    }

    #[test]
    fn a_record_is_replayed_then_refused_with_other_parameters_then_expires() {
        let mut ledger = Ledger::default();
        let key = || ("app".to_owned(), "t1".to_owned());
        let params: Map<String, Value> = serde_json::from_str(r#"{"a":"1"}"#).unwrap();
        let other: Map<String, Value> = serde_json::from_str(r#"{"a":"2"}"#).unwrap();
        let start = Instant::now();
        let day = Duration::from_secs(86_400);
        let first = ledger.record(key(), &params, start, day, Utc::now(), |n| {
            node(&n.to_string())
        });
        assert_eq!(first, Ok(Recorded::Billed(node("1"))));
        let again = ledger.record(key(), &params, start, day, Utc::now(), |_| node("new"));
        assert_eq!(again, Ok(Recorded::Repeated(node("1"))));
        let repeat = ledger.record(key(), &other, start, day, Utc::now(), |_| node("new"));
        assert_eq!(repeat, Err(BusinessError::TransactionIdRepeat));
        let late = start + day + Duration::from_millis(1);
        let expired = ledger.record(key(), &params, late, day, Utc::now(), |_| node("new"));
        assert_eq!(expired, Err(BusinessError::TransactionIdExpired));
        assert_eq!(
            (ledger.stats().billed, ledger.stats().unbilled_repeats),
            (1, 1)
        );
    }

    #[test]
    fn the_bill_is_filtered_by_utc8_day_and_written_with_lf() {
        let mut ledger = Ledger::default();
        let late_utc = DateTime::parse_from_rfc3339("2024-05-20T16:30:00Z")
            .unwrap()
            .to_utc();
        let params = Map::new();
        let key = ("a,b".to_owned(), "t1".to_owned());
        ledger
            .record(
                key,
                &params,
                Instant::now(),
                Duration::MAX,
                late_utc,
                |_| node("ZM1"),
            )
            .unwrap();
        let may_21 = NaiveDate::from_ymd_opt(2024, 5, 21).unwrap();
        let csv = bill_csv(&ledger.bill_rows(Some(may_21)));
        assert_eq!(
            csv,
            "biz_no,transaction_id,app_id,billed_at\nZM1,t1,\"a,b\",2024-05-21 00:30:00\n"
        );
        assert!(
            ledger
                .bill_rows(NaiveDate::from_ymd_opt(2024, 5, 20))
                .is_empty()
        );
    }
}
