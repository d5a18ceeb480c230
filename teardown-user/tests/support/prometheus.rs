//! Asking a Prometheus server: the query URL and its one-series answer.

use serde_json::Value;

/// Percent-encodes a PromQL query for a URL.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The HTTP target of an instant query, now or at Unix time `at`.
pub fn query_target(promql: &str, at: Option<f64>) -> String {
    match at {
        Some(at) => format!("/api/v1/query?query={}&time={at:.3}", url_encode(promql)),
        None => format!("/api/v1/query?query={}", url_encode(promql)),
    }
}

/// The value of an instant query's single series, from the HTTP answer
/// (status and body), or why there is none.
pub fn single_value(status: u16, body: &str) -> Result<f64, String> {
    let answer: Value =
        serde_json::from_str(body).map_err(|err| format!("HTTP {status}, {err}: {body}"))?;
    match answer["data"]["result"].as_array().map(Vec::as_slice) {
        Some([series]) => series["value"][1]
            .as_str()
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("no value in {series}")),
        _ => Err(format!("HTTP {status}: not one series: {body}")),
    }
}
