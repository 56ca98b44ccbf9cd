//! etcd backend client: one connection and one lease per client, kept alive; keys put with the
//! lease under `/svc/<service>/`; subscribers read the prefix, then watch it from the next revision.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{anyhow, Result};
use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Update;

pub struct EtcdClient {
    client: Client,
    lease: i64,
    background: Vec<JoinHandle<()>>,
}

fn prefix(service: &str) -> String {
    format!("/svc/{service}/")
}

impl EtcdClient {
    pub async fn connect(endpoint: &str, ttl: Duration) -> Result<Self> {
        let mut client = Client::connect([endpoint], None).await?;
        let ttl_s = ttl.as_secs().max(2);
        let lease = client.lease_grant(ttl_s as i64, None).await?.id();
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
        let keepalive = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(ttl_s) / 3);
            every.tick().await;
            loop {
                every.tick().await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                if !matches!(responses.message().await, Ok(Some(_))) {
                    break;
                }
            }
        });
        Ok(Self {
            client,
            lease,
            background: vec![keepalive],
        })
    }

    pub async fn register(&self, service: &str, instance: &str) -> Result<()> {
        let key = format!("{}{instance}", prefix(service));
        self.client
            .kv_client()
            .put(
                key,
                instance,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await?;
        Ok(())
    }

    /// Puts several keys with the client's lease in one transaction.
    pub async fn register_batch(&self, regs: &[(&str, String)]) -> Result<()> {
        let ops: Vec<TxnOp> = regs
            .iter()
            .map(|(service, instance)| {
                TxnOp::put(
                    format!("{}{instance}", prefix(service)),
                    instance.as_str(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )
            })
            .collect();
        self.client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await?;
        Ok(())
    }

    /// Reads the prefix (sent as the first update), then watches it from the next revision.
    pub async fn subscribe(
        &mut self,
        service: &str,
        sub: usize,
        tx: mpsc::UnboundedSender<Update>,
    ) -> Result<()> {
        let prefix = prefix(service);
        let (got, revision) = read_prefix(&self.client, &prefix).await?;
        let mut set: BTreeSet<String> = got
            .kvs()
            .iter()
            .filter_map(|kv| instance_of(kv.key(), &prefix))
            .collect();
        let mut stream = self
            .client
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        let _ = tx.send(Update {
            sub,
            at: Instant::now(),
            instances: set.iter().cloned().collect(),
        });
        let watcher = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                if resp.events().is_empty() {
                    continue;
                }
                for ev in resp.events() {
                    let Some(name) = ev.kv().and_then(|kv| instance_of(kv.key(), &prefix)) else {
                        continue;
                    };
                    match ev.event_type() {
                        EventType::Put => set.insert(name),
                        EventType::Delete => set.remove(&name),
                    };
                }
                if tx
                    .send(Update {
                        sub,
                        at,
                        instances: set.iter().cloned().collect(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        self.background.push(watcher);
        Ok(())
    }

    /// Stops the keep-alives and closes the connection without revoking the lease, as a crashed
    /// client would: its keys go when the lease expires.
    pub fn vanish(self) {}
}

impl Drop for EtcdClient {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

fn instance_of(key: &[u8], prefix: &str) -> Option<String> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)
        .map(str::to_string)
}

/// Every key under `prefix` and the revision they were read at (a watch from the next one
/// misses nothing).
async fn read_prefix(client: &Client, prefix: &str) -> Result<(etcd_client::GetResponse, i64)> {
    let got = client
        .kv_client()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = got
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| anyhow!("get without header"))?;
    Ok((got, revision))
}

/// Opens one watch stream on `client`'s connection and creates a watcher of `service`'s
/// prefix on it for every subscriber in `subs` (from the revision after the current one), as
/// an etcd client multiplexes the watches of one context on one stream. Returns once etcd
/// has confirmed every watcher; then each watcher's events go to `tx` as an [`Update`] whose
/// `instances` are the keys put by that response (the mass workloads look for one new key).
pub async fn watch_many(
    client: &Client,
    service: &str,
    subs: &[usize],
    tx: mpsc::UnboundedSender<Update>,
) -> Result<JoinHandle<()>> {
    anyhow::ensure!(!subs.is_empty(), "watch_many: no subscribers");
    let prefix = prefix(service);
    let (_, revision) = read_prefix(client, &prefix).await?;
    let options = || {
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
    };
    let mut stream = client
        .watch_client()
        .watch(prefix.as_str(), Some(options()))
        .await?;
    for _ in 1..subs.len() {
        stream.watch(prefix.as_str(), Some(options())).await?;
    }
    // etcd confirms the creates of one stream in order; each confirmation names its watch id.
    let mut ids: HashMap<i64, usize> = HashMap::with_capacity(subs.len());
    while ids.len() < subs.len() {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .map_err(|_| {
                anyhow!(
                    "etcd confirmed {} of {} watchers within 30 s",
                    ids.len(),
                    subs.len()
                )
            })??
            .ok_or_else(|| anyhow!("watch stream ended while creating watchers"))?;
        if resp.canceled() {
            anyhow::bail!("etcd cancelled a watcher: {}", resp.cancel_reason());
        }
        if resp.created() {
            ids.insert(resp.watch_id(), subs[ids.len()]);
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            let Some(&sub) = ids.get(&resp.watch_id()) else {
                continue;
            };
            let instances: Vec<String> = resp
                .events()
                .iter()
                .filter(|ev| ev.event_type() == EventType::Put)
                .filter_map(|ev| ev.kv().and_then(|kv| instance_of(kv.key(), &prefix)))
                .collect();
            if instances.is_empty() {
                continue;
            }
            if tx.send(Update { sub, at, instances }).is_err() {
                break;
            }
        }
    }))
}

/// A plain connection (no lease) for watchers and one-off writes.
pub async fn connect_plain(endpoint: &str) -> Result<Client> {
    Ok(Client::connect([endpoint], None).await?)
}

/// Waits until etcd answers a read.
pub async fn probe(endpoint: &str) -> Result<()> {
    let mut c = Client::connect([endpoint], None).await?;
    c.get("/probe", None).await?;
    Ok(())
}
