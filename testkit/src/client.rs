//! The client library (`registry-client`) as its tests use it against test nodes: a
//! configuration that fails over fast, and the publishers a node holds, read through the
//! library's own node API.

use std::time::Duration;

use registry_client::{ClientConfig, HttpSettings, NodeApi, RegistryClient, ServiceId};

/// A configuration for test nodes at `urls`: 5 s sessions, 5 s requests, 20 s operations,
/// 2 s connects, retries every 300 ms with a backoff of at most 1 s. Tests that need other
/// timings change the fields they care about.
pub fn config(urls: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new(urls.iter().cloned())
        .session_ttl(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(20));
    config.connect_timeout = Duration::from_secs(2);
    config.backoff_max = Duration::from_secs(1);
    config.retry_interval = Duration::from_millis(300);
    config
}

/// A client of [`config`].
pub fn client(urls: &[String]) -> RegistryClient {
    RegistryClient::new(config(urls)).expect("client")
}

/// The (registerId, data) pairs of `data_id` as `GET /api/v1/data` on `url` shows them,
/// sorted.
pub async fn try_publishers_on(
    url: &str,
    data_id: &str,
) -> Result<Vec<(String, Vec<String>)>, registry_client::Error> {
    let api = NodeApi::new(reqwest::Client::new(), url, &HttpSettings::default())?;
    let answer = api.data(&ServiceId::new(data_id), None).await?;
    let mut publishers: Vec<_> = answer
        .publishers
        .into_iter()
        .map(|p| (p.register_id, p.data))
        .collect();
    publishers.sort();
    Ok(publishers)
}

/// [`try_publishers_on`]; panics when the query fails.
pub async fn publishers_on(url: &str, data_id: &str) -> Vec<(String, Vec<String>)> {
    try_publishers_on(url, data_id)
        .await
        .unwrap_or_else(|e| panic!("GET /api/v1/data?dataId={data_id} on {url}: {e}"))
}
