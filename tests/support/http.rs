//! HTTP probes of a running worker: a free local port for its
//! `http.listen`, GETs retried until it answers, and reading its Prometheus
//! samples. Only for tests and benches; a probe that never answers panics.

use std::time::Duration;

use super::poll::eventually;

/// How long a worker's HTTP server may take to answer at all.
pub const UP_WITHIN: Duration = Duration::from_secs(60);
/// The per-request bound of [`get_text_promptly`].
pub const PROMPT: Duration = Duration::from_secs(20);

/// A port nothing listens on right now (the OS's pick, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `127.0.0.1:{free_port}`, ready for `ZHIMA__HTTP__LISTEN`.
pub fn free_local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// One GET's status and body, retried while the server is not up yet, for up
/// to [`UP_WITHIN`]. A request may take as long as it takes.
pub async fn get_text(url: &str) -> (u16, String) {
    get_until_up(reqwest::Client::new(), url).await
}

/// One GET that must answer within [`PROMPT`] (a `/readyz` that hangs, e.g.
/// while the database is cut, is a failure too), retried while the server is
/// not up yet, for up to [`UP_WITHIN`].
pub async fn get_text_promptly(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(PROMPT)
        .build()
        .expect("client");
    get_until_up(client, url).await
}

async fn get_until_up(client: reqwest::Client, url: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + UP_WITHIN;
    loop {
        match client.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                return (status, response.text().await.expect("body"));
            }
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline && !error.is_timeout(),
                "{url} did not answer: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus text a worker serves at `metrics_url`, if it answers.
pub async fn scrape(metrics_url: &str) -> Option<String> {
    let response = reqwest::get(metrics_url).await.ok()?;
    response.text().await.ok()
}

/// The Prometheus text at `metrics_url`, once it answers (within
/// [`UP_WITHIN`]).
pub async fn scrape_when_up(metrics_url: &str) -> String {
    let what = format!("{metrics_url} answers");
    eventually(UP_WITHIN, &what, || scrape(metrics_url)).await
}

/// The value text of the sample line whose name and labels are exactly
/// `series`, e.g. `name{labels}` in `name{labels} 12`.
fn sample_text<'a>(metrics: &'a str, series: &str) -> Option<&'a str> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then_some(value.trim())
    })
}

fn parse_sample(series: &str, text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| panic!("sample {series} is not a number: {text}"))
}

/// The value of `series`, `None` when it is not exported (or not a number).
pub fn value_of(metrics: &str, series: &str) -> Option<f64> {
    sample_text(metrics, series)?.parse().ok()
}

/// The value of `series`, which must be exported.
pub fn sample(metrics: &str, series: &str) -> f64 {
    let text =
        sample_text(metrics, series).unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"));
    parse_sample(series, text)
}

/// The value of `series`; a series not exported yet reads as 0.
pub fn sample_or_zero(metrics: &str, series: &str) -> f64 {
    sample_text(metrics, series).map_or(0.0, |text| parse_sample(series, text))
}
