//! Clients that publish and subscribe through a cluster's client Service for the whole of a
//! scenario, and the checks that no acknowledged publisher is ever lost.

use crate::eventually;
use operator::crd::{MemberState, RegistryCluster};
use registry_client::{ClientConfig, Publication, Publisher, RegistryClient, ServiceId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NO_LOSS_WAIT: Duration = Duration::from_secs(90);
pub const SERVICES: usize = 8;

/// Ready with `data` data and `sessions` session nodes, every member Active, status current.
pub fn cluster_ready(rc: &RegistryCluster, data: u32, sessions: u32) -> bool {
    let Some(s) = &rc.status else { return false };
    let ready = s
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready
        && s.observed_generation == rc.metadata.generation
        && s.ready_data_replicas == data
        && s.ready_session_replicas == sessions
        && s.membership.members.len() == data as usize
        && s.membership
            .members
            .iter()
            .all(|m| m.state == MemberState::Active)
}

/// Clients that publish and subscribe through the client Service the whole time.
pub struct Workload {
    pub client: RegistryClient,
    expected: BTreeMap<String, BTreeSet<String>>,
    _publishers: Vec<Publisher>,
    churned: Arc<Mutex<BTreeSet<String>>>,
    pub churn: tokio::task::JoinHandle<Vec<Publisher>>,
}

impl Workload {
    pub async fn start(url: &str) -> Workload {
        let client = RegistryClient::new(
            ClientConfig::new([url.to_owned()])
                .operation_timeout(Duration::from_secs(30))
                .request_timeout(Duration::from_secs(5)),
        )
        .expect("client");
        let mut expected = BTreeMap::new();
        let mut publishers = Vec::new();
        for s in 0..SERVICES {
            let service = format!("e2e.svc{s}");
            for i in 0..3 {
                let data = format!("10.0.{s}.{i}:8080");
                let p = client
                    .publish(Publication::new(ServiceId::new(&service), [data.clone()]))
                    .await
                    .expect("publish");
                publishers.push(p);
                expected
                    .entry(service.clone())
                    .or_insert_with(BTreeSet::new)
                    .insert(data);
            }
        }
        let churned: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let churn = {
            let client = client.clone();
            let churned = churned.clone();
            tokio::spawn(async move {
                let mut kept = Vec::new();
                for n in 0.. {
                    let data = format!("churn-{n}");
                    let p = Publication::new(ServiceId::new("e2e.churn"), [data.clone()]);
                    // A publish that fails while nodes move is retried by the next one.
                    if let Ok(Ok(p)) =
                        tokio::time::timeout(Duration::from_secs(10), client.publish(p)).await
                    {
                        kept.push(p);
                        churned.lock().unwrap().insert(data);
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    if kept.len() >= 400 {
                        break;
                    }
                }
                kept
            })
        };
        Workload {
            client,
            expected,
            _publishers: publishers,
            churned,
            churn,
        }
    }

    pub async fn data_of(&self, service: &str) -> Option<BTreeSet<String>> {
        let answer = self
            .client
            .endpoints()
            .data(&ServiceId::new(service), None)
            .await
            .ok()?;
        Some(answer.zones.values().flatten().cloned().collect())
    }

    /// Every publisher ever acknowledged is visible again (re-registration may take a moment).
    pub async fn assert_nothing_lost(&self, step: &str) {
        let expected = self.expected.clone();
        eventually(
            &format!("every publisher present after {step}"),
            NO_LOSS_WAIT,
            || {
                let expected = expected.clone();
                async move {
                    for (service, want) in &expected {
                        if &self.data_of(service).await? != want {
                            return None;
                        }
                    }
                    let churned = self.churned.lock().unwrap().clone();
                    let have = self.data_of("e2e.churn").await?;
                    churned.is_subset(&have).then_some(())
                }
            },
        )
        .await;
        eprintln!(
            "[e2e] {step}: all {} fixed and {} churned publishers present",
            SERVICES * 3,
            self.churned.lock().unwrap().len()
        );
    }
}

/// Waits until `name` is [`cluster_ready`] with `data` and `sessions` nodes.
pub async fn wait_cluster_ready(
    clusters: &kube::Api<RegistryCluster>,
    name: &str,
    data: u32,
    sessions: u32,
    deadline: Duration,
) -> RegistryCluster {
    eventually(
        &format!("{name} Ready with {data} data / {sessions} session nodes"),
        deadline,
        || async {
            let rc = clusters.get(name).await.ok()?;
            cluster_ready(&rc, data, sessions).then_some(rc)
        },
    )
    .await
}

/// `Some(())` once the session node of every pod IP in `ips` reports `stopPush` = `stop`
/// (`GET /api/v1/admin/push` on its public port).
pub async fn push_stopped_on(ips: impl IntoIterator<Item = String>, stop: bool) -> Option<()> {
    for ip in ips {
        let (_, v) = testkit::http::Client::new(format!("{ip}:9603"))
            .try_get("/api/v1/admin/push")
            .await
            .ok()?;
        if v["stopPush"].as_bool()? != stop {
            return None;
        }
    }
    Some(())
}
