//! The reconciler: observes a RegistryCluster's objects, pods and nodes, runs the pure
//! planners, then applies objects (server-side apply), publishes and delivers membership,
//! sets push settings on session nodes, records events and writes status.

use crate::conditions::{self, Observation};
use crate::crd::{Membership, RegistryCluster, RegistryClusterStatus, TokenSecretRef, DATA_PORT};
use crate::credentials;
use crate::membership::{plan_membership, DataPod, MemberChange, MembershipInput, MembershipPlan};
use crate::metrics::{ClusterLabels, Metrics};
use crate::nodes::{NodeClient, NodeStatus, PushSettings, TlsPem};
use crate::resources::{self, Names, NodeRole, OperatorPeer, MANAGER, TEMPLATE_HASH_ANNOTATION};
use crate::rollout::{plan_rollout, PodRevision, RolloutInput, RolloutPlan, RolloutState};
use crate::{Error, Result};
use futures::future::join_all;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// Label a StatefulSet puts on each pod: the revision the pod was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub nodes: NodeClient,
    pub metrics: Arc<Metrics>,
    /// True while this replica may write (holds the Lease, or runs without election).
    pub leader: watch::Receiver<bool>,
    /// The last membership this replica wrote per cluster uid: the informer cache can lag
    /// behind our own status writes, and an epoch must never be reused.
    written: Mutex<HashMap<String, Membership>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Node clients of clusters with TLS, by `namespace/secret`, with the PEM they were
    /// built from (rebuilt when the Secret is renewed; reused otherwise, with their pools).
    tls_nodes: Mutex<HashMap<String, (TlsPem, NodeClient)>>,
    /// With a peer: every cluster gets a NetworkPolicy that lets only its own pods and
    /// this operator reach the internal ports (SECURITY.md).
    network_policy: Option<OperatorPeer>,
}

impl Context {
    /// The node client for a cluster with TLS from `pem`, reused while the Secret is the
    /// same.
    fn tls_nodes(&self, key: String, pem: TlsPem) -> std::result::Result<NodeClient, String> {
        let mut cache = self.tls_nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((have, nodes)) = cache.get(&key) {
            if *have == pem {
                return Ok(nodes.clone());
            }
        }
        let nodes = self.nodes.with_tls(&pem)?;
        cache.insert(key, (pem, nodes.clone()));
        Ok(nodes)
    }

    pub fn new(
        client: Client,
        identity: &str,
        metrics: Arc<Metrics>,
        leader: watch::Receiver<bool>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        Context {
            client,
            recorder,
            nodes: NodeClient::new(Duration::from_secs(3)),
            metrics,
            leader,
            written: Mutex::default(),
            failures: Mutex::default(),
            tls_nodes: Mutex::default(),
            network_policy: None,
        }
    }

    /// Gives every cluster a NetworkPolicy admitting `operator` to its internal ports.
    pub fn with_network_policy(mut self, operator: Option<OperatorPeer>) -> Context {
        self.network_policy = operator;
        self
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn remembered(&self, uid: &str) -> Option<Membership> {
        self.written.lock().ok()?.get(uid).cloned()
    }

    fn remember(&self, uid: &str, membership: &Membership) {
        if let Ok(mut w) = self.written.lock() {
            w.insert(uid.to_owned(), membership.clone());
        }
    }
}

/// Entry point for the kube-runtime Controller.
pub async fn reconcile(rc: Arc<RegistryCluster>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.is_leader() {
        // A follower never writes; it is asked again when it becomes leader.
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    if rc.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything.
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = rc.reconcile(&ctx).await;
    if let Err(e) = &result {
        if e.refused_by_api_server() {
            rc.report_degraded(&ctx, e).await;
        }
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciliations
        .get_or_create(&Metrics::result(label))
        .inc();
    if result.is_ok() {
        if let Ok(mut f) = ctx.failures.lock() {
            f.remove(&rc.uid().unwrap_or_default());
        }
    }
    result
}

/// Requeue with exponential backoff per object (0.5 s doubling, at most 60 s).
pub fn error_policy(rc: Arc<RegistryCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(rc.uid().unwrap_or_default()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = Duration::from_millis(500u64.saturating_mul(1 << failures.min(7)))
        .min(Duration::from_secs(60));
    warn!(name = %rc.name_any(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// One pod of a role, as the reconciler sees it.
#[derive(Debug, Clone)]
struct ObservedPod {
    name: String,
    ordinal: u32,
    /// `http://ip:port` of the node's internal listener while the pod runs and is not
    /// being deleted.
    base: Option<String>,
    ip: Option<String>,
    ready: bool,
    revision: Option<String>,
}

fn observe_pods(pods: &[Pod], nodes: &NodeClient, port: u16) -> Vec<ObservedPod> {
    let mut out: Vec<ObservedPod> = pods
        .iter()
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = crate::membership::ordinal_of(&name)?;
            let status = p.status.as_ref();
            let phase_ok = status
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|phase| phase == "Running");
            let ip = status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty())
                .filter(|_| phase_ok && p.metadata.deletion_timestamp.is_none());
            let ready = ip.is_some()
                && status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(ObservedPod {
                base: ip.as_ref().map(|ip| nodes.base(ip, port)),
                ip,
                name,
                ordinal,
                ready,
                revision: p.labels().get(REVISION_LABEL).cloned(),
            })
        })
        .collect();
    out.sort_by_key(|p| p.ordinal);
    out
}

async fn node_statuses(
    nodes: &NodeClient,
    pods: &[ObservedPod],
    token: Option<&str>,
) -> Vec<Option<NodeStatus>> {
    join_all(pods.iter().map(|p| async move {
        match &p.base {
            Some(base) => nodes.status(base, token).await.ok(),
            None => None,
        }
    }))
    .await
}

async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name: obj.name_any(),
            message: match &source {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            },
            source,
        })
}

/// The PEM texts of a cluster's TLS Secret; an error names what is missing.
async fn read_tls(client: &Client, namespace: &str, secret_name: &str) -> Result<TlsPem> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let problem = |message: String| Error::TlsSecret {
        name: secret_name.to_owned(),
        message,
    };
    let secret = secrets
        .get_opt(secret_name)
        .await?
        .ok_or_else(|| problem("not found".into()))?;
    let value = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
    };
    let (cert, key, ca) = (
        value(resources::TLS_CERT_KEY),
        value(resources::TLS_KEY_KEY),
        value(resources::TLS_CA_KEY),
    );
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(TlsPem { cert, key, ca }),
        _ => Err(problem(format!(
            "needs {}, {} and {} (the cert-manager layout)",
            resources::TLS_CERT_KEY,
            resources::TLS_KEY_KEY,
            resources::TLS_CA_KEY
        ))),
    }
}

async fn read_token(client: &Client, namespace: &str, r: &TokenSecretRef) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let missing = || Error::TokenSecretMissing {
        name: r.name.clone(),
        key: r.key.clone(),
    };
    let secret = secrets.get_opt(&r.name).await?.ok_or_else(missing)?;
    credentials::secret_value(&secret, &r.key).ok_or_else(missing)
}

fn rollout_for(
    sts: Option<&StatefulSet>,
    desired_hash: &str,
    replicas: u32,
    pods: &[ObservedPod],
    gate_open: bool,
) -> RolloutPlan {
    let Some(sts) = sts else {
        return RolloutPlan {
            partition: 0,
            state: RolloutState::Complete,
        };
    };
    let applied_hash = sts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION));
    let status = sts.status.as_ref();
    let status_current = match (
        status.and_then(|s| s.observed_generation),
        sts.metadata.generation,
    ) {
        (Some(observed), Some(generation)) => observed >= generation,
        (None, Some(_)) => false,
        _ => true,
    };
    let update_revision = status.and_then(|s| s.update_revision.clone());
    let current_revision = status.and_then(|s| s.current_revision.clone());
    let mut revisions: Vec<PodRevision> = pods
        .iter()
        .map(|p| PodRevision {
            ordinal: p.ordinal,
            // Without revision information nothing can be rolled one by one; treat the pod
            // as current rather than block forever.
            updated: match (&update_revision, &p.revision) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            },
            ready: p.ready,
        })
        .collect();
    // A pod missing while the set is still rolling (its current revision is not yet the
    // update revision) is one the rollout is replacing: it is outdated until it is back.
    // Without this the last pod's replacement looked like a finished rollout, and its
    // member was dropped from the ring (moving its datums) while the pod was away.
    let still_rolling = matches!(
        (&update_revision, &current_revision),
        (Some(update), Some(current)) if update != current
    );
    if still_rolling {
        let missing = (0..replicas).filter(|o| !pods.iter().any(|p| p.ordinal == *o));
        revisions.extend(missing.map(|ordinal| PodRevision {
            ordinal,
            updated: false,
            ready: false,
        }));
    }
    let current_partition = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0) as u32;
    plan_rollout(&RolloutInput {
        replicas,
        template_changed: applied_hash.map(String::as_str) != Some(desired_hash),
        status_current,
        current_partition,
        pods: &revisions,
        gate_open,
    })
}

fn sts_replicas(sts: Option<&StatefulSet>) -> Option<u32> {
    sts.map(|s| s.spec.replicas.unwrap_or(1).max(0) as u32)
}

impl RegistryCluster {
    /// One reconcile pass. Every step is idempotent, so a pass cut short by an error is
    /// simply repeated.
    #[instrument(skip(self, ctx), fields(namespace = self.namespace().unwrap_or_default(), name = %self.name_any()))]
    pub async fn reconcile(&self, ctx: &Context) -> Result<Action> {
        let ns = self.namespace().ok_or(Error::MissingNamespace)?;
        let name = self.name_any();
        let uid = self.uid().unwrap_or_default();
        let names = Names(&name);
        let client = &ctx.client;
        let mut problem: Option<(String, String)> = None;

        let token = match &self.spec.token_secret_ref {
            None => None,
            Some(r) => match read_token(client, &ns, r).await {
                Ok(t) => Some(t),
                Err(e @ Error::TokenSecretMissing { .. }) => {
                    problem = Some((e.reason().to_owned(), e.to_string()));
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let creds = credentials::ensure(client, self).await?;
        // With access rules, the operator's own admin token (rendered into them) opens the
        // push settings; the document is checked first, and a bad one is Degraded with the
        // offending field while the nodes keep the rules they have.
        let operator_token = resources::operator_access_token(&creds.cluster_token);
        let token = match resources::rendered_access(self, &creds.cluster_token) {
            None => token,
            Some(Ok(doc)) => {
                apply(client, &ns, &resources::access_secret(self, &doc)).await?;
                Some(operator_token)
            }
            Some(Err(e)) => {
                problem = Some(("AccessInvalid".to_owned(), e.to_string()));
                Some(operator_token)
            }
        };
        // The client token (public API: push settings); the cluster token opens the nodes'
        // internal listeners (status, membership).
        let token = token.as_deref();
        let cluster_token = Some(creds.cluster_token.as_str());
        // With TLS, every call to a node goes over HTTPS with the Secret's certificate.
        let nodes = match &self.spec.tls {
            None => ctx.nodes.clone(),
            Some(tls) => {
                let built = match read_tls(client, &ns, &tls.secret_name).await {
                    Ok(pem) => ctx
                        .tls_nodes(format!("{ns}/{}", tls.secret_name), pem)
                        .map_err(|message| Error::TlsSecret {
                            name: tls.secret_name.clone(),
                            message,
                        }),
                    Err(e) => Err(e),
                };
                match built {
                    Ok(nodes) => nodes,
                    Err(e @ Error::TlsSecret { .. }) => {
                        // The pods cannot start without it either; the rest is applied.
                        problem = Some((e.reason().to_owned(), e.to_string()));
                        ctx.nodes.with_scheme_https()
                    }
                    Err(e) => return Err(e),
                }
            }
        };

        apply(client, &ns, &resources::node_service_account(self)).await?;
        apply(client, &ns, &resources::node_role(self)).await?;
        apply(client, &ns, &resources::node_role_binding(self)).await?;
        for role in [NodeRole::Data, NodeRole::Session] {
            apply(client, &ns, &resources::headless_service(self, role)).await?;
            apply(client, &ns, &resources::pod_disruption_budget(self, role)).await?;
        }
        apply(client, &ns, &resources::client_service(self)).await?;
        if let Some(peer) = &ctx.network_policy {
            apply(client, &ns, &resources::network_policy(self, peer)).await?;
        }

        // Observe.
        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let data_sts = sts_api.get_opt(&names.statefulset(NodeRole::Data)).await?;
        let session_sts = sts_api
            .get_opt(&names.statefulset(NodeRole::Session))
            .await?;
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let list = |role| ListParams::default().labels(&resources::selector_string(self, role));
        let data_pods = observe_pods(
            &pod_api.list(&list(NodeRole::Data)).await?.items,
            &nodes,
            DATA_PORT,
        );
        let session_pods = observe_pods(
            &pod_api.list(&list(NodeRole::Session)).await?.items,
            &nodes,
            resources::internal_port(NodeRole::Session).1,
        );
        let data_status = node_statuses(&nodes, &data_pods, cluster_token).await;
        let session_status = node_statuses(&nodes, &session_pods, cluster_token).await;

        // Membership.
        let published = self.status.clone().unwrap_or_default().membership;
        let current = match ctx.remembered(&uid) {
            Some(m) if m.epoch > published.epoch => m,
            _ => published,
        };
        let highest_seen = data_status
            .iter()
            .chain(session_status.iter())
            .flatten()
            .map(|s| s.epoch)
            .max()
            .unwrap_or(0)
            .max(current.epoch);
        let data_obs: Vec<DataPod> = data_pods
            .iter()
            .zip(&data_status)
            .map(|(p, s)| DataPod {
                ordinal: p.ordinal,
                name: p.name.clone(),
                address: p
                    .ip
                    .as_ref()
                    .map(|ip| crate::nodes::host_port(ip, DATA_PORT)),
                report: s.as_ref().map(crate::membership::NodeReport::from),
            })
            .collect();
        // Members whose pods the data rollout is replacing now (by the StatefulSet's
        // partition as observed) keep their place on the ring while they are away.
        let data_hash = resources::template_hash(&resources::pod_template(self, NodeRole::Data));
        let observed_replicas = sts_replicas(data_sts.as_ref()).unwrap_or(0);
        let observed_in_set: Vec<ObservedPod> = data_pods
            .iter()
            .filter(|p| p.ordinal < observed_replicas)
            .cloned()
            .collect();
        let observed_rollout = rollout_for(
            data_sts.as_ref(),
            &data_hash,
            observed_replicas,
            &observed_in_set,
            false,
        );
        let replacing: Vec<String> = current
            .members
            .iter()
            .filter(|m| observed_rollout.replaces(&m.name))
            .map(|m| m.name.clone())
            .collect();
        let plan = plan_membership(&MembershipInput {
            desired_replicas: self.spec.data.replicas,
            statefulset_replicas: sts_replicas(data_sts.as_ref()),
            current: &current,
            highest_seen_epoch: highest_seen,
            pods: &data_obs,
            replacing: &replacing,
        });
        if plan.membership != current {
            // Persisted before any node hears of it, so the epoch survives a crash.
            let mut status = self.status.clone().unwrap_or_default();
            status.membership = plan.membership.clone();
            self.patch_status(client, &status).await?;
            ctx.remember(&uid, &plan.membership);
        }
        ctx.metrics
            .membership_epoch
            .get_or_create(&ClusterLabels {
                namespace: ns.clone(),
                name: name.clone(),
            })
            .set(plan.membership.epoch as i64);
        let doc = plan.membership.document().signed(&creds.signer);
        apply(client, &ns, &resources::node_config(self, &doc)).await?;
        if doc.epoch > 0 {
            self.deliver(ctx, &nodes, &doc, cluster_token, &data_pods, &data_status)
                .await;
            self.deliver(
                ctx,
                &nodes,
                &doc,
                cluster_token,
                &session_pods,
                &session_status,
            )
            .await;
        }
        self.sync_push_settings(&nodes, token, &session_pods).await;

        // StatefulSets, with rollouts gated on the ring.
        let data_replicas = plan.statefulset_replicas;
        let data_in_set: Vec<ObservedPod> = data_pods
            .iter()
            .filter(|p| p.ordinal < data_replicas)
            .cloned()
            .collect();
        let data_gate = plan.settled && data_in_set.iter().all(|p| p.ready);
        let data_rollout = rollout_for(
            data_sts.as_ref(),
            &data_hash,
            data_replicas,
            &data_in_set,
            data_gate,
        );
        let session_replicas = self.spec.session.replicas;
        let session_in_set: Vec<ObservedPod> = session_pods
            .iter()
            .filter(|p| p.ordinal < session_replicas)
            .cloned()
            .collect();
        let session_hash =
            resources::template_hash(&resources::pod_template(self, NodeRole::Session));
        let session_gate = data_rollout.state == RolloutState::Complete && plan.settled;
        let session_rollout = rollout_for(
            session_sts.as_ref(),
            &session_hash,
            session_replicas,
            &session_in_set,
            session_gate,
        );
        let applied_data = apply(
            client,
            &ns,
            &resources::statefulset(self, NodeRole::Data, data_replicas, data_rollout.partition),
        )
        .await?;
        apply(
            client,
            &ns,
            &resources::statefulset(
                self,
                NodeRole::Session,
                session_replicas,
                session_rollout.partition,
            ),
        )
        .await?;

        self.record_events(
            ctx,
            &plan,
            &current,
            data_sts.as_ref(),
            &applied_data,
            &data_rollout,
            &session_rollout,
        )
        .await;

        // Status.
        // A member whose pod the rollout is replacing is expected to drop out; only an
        // unplanned loss degrades the cluster.
        let lost: Vec<String> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                MemberChange::Lost { name } if !data_rollout.replaces(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let count = |pods: &[ObservedPod], f: &dyn Fn(&ObservedPod) -> bool| {
            pods.iter().filter(|p| f(p)).count() as u32
        };
        let ready_data = count(&data_in_set, &|p| p.ready);
        let ready_sessions = count(&session_in_set, &|p| p.ready);
        let update_revision = |sts: &Option<StatefulSet>| {
            sts.as_ref()
                .and_then(|s| s.status.as_ref())
                .and_then(|s| s.update_revision.clone())
        };
        let data_rev = update_revision(&data_sts);
        let session_rev = update_revision(&session_sts);
        let previous = self.status.clone().unwrap_or_default();
        let observation = Observation {
            generation: self.metadata.generation,
            desired_data: self.spec.data.replicas,
            ready_data,
            desired_sessions: session_replicas,
            ready_sessions,
            epoch: plan.membership.epoch,
            data_phase: plan.phase.clone(),
            ring_settled: plan.settled,
            data_rollout: data_rollout.state.clone(),
            session_rollout: session_rollout.state.clone(),
            lost_members: lost,
            problem,
        };
        let status = RegistryClusterStatus {
            observed_generation: self.metadata.generation,
            conditions: conditions::compute(
                &observation,
                &previous.conditions,
                Time(Timestamp::now()),
            ),
            data_replicas: self.spec.data.replicas,
            ready_data_replicas: ready_data,
            updated_data_replicas: count(&data_in_set, &|p| {
                data_rev.is_none() || p.revision == data_rev
            }),
            session_replicas,
            ready_session_replicas: ready_sessions,
            updated_session_replicas: count(&session_in_set, &|p| {
                session_rev.is_none() || p.revision == session_rev
            }),
            membership: plan.membership.clone(),
        };
        if Some(&status) != self.status.as_ref() {
            self.patch_status(client, &status).await?;
        }

        let stable = conditions::is_true(&status.conditions, conditions::READY)
            && !conditions::is_true(&status.conditions, conditions::PROGRESSING);
        Ok(Action::requeue(if stable {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(2)
        }))
    }

    /// Puts an error that stopped the pass into status: `Degraded` with the API server's
    /// message, everything else as last written.
    async fn report_degraded(&self, ctx: &Context, error: &Error) {
        let mut status = self.status.clone().unwrap_or_default();
        // Never write back an older membership than this replica already published.
        if let Some(m) = ctx.remembered(&self.uid().unwrap_or_default()) {
            if m.epoch > status.membership.epoch {
                status.membership = m;
            }
        }
        status.conditions = conditions::with_problem(
            &status.conditions,
            error.reason(),
            &error.to_string(),
            self.metadata.generation,
            Time(Timestamp::now()),
        );
        if Some(&status) == self.status.as_ref() {
            return;
        }
        if let Err(e) = self.patch_status(&ctx.client, &status).await {
            warn!(error = %e, "could not record the failure in status");
        }
    }

    async fn patch_status(&self, client: &Client, status: &RegistryClusterStatus) -> Result<()> {
        let api: Api<RegistryCluster> =
            Api::namespaced(client.clone(), &self.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": RegistryCluster::api_version(&()),
            "kind": RegistryCluster::kind(&()),
            "status": status,
        });
        api.patch_status(
            &self.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        Ok(())
    }

    /// Sends the document to every running node that is behind it. Failures are retried on
    /// the next pass (the node's status shows it is still behind).
    async fn deliver(
        &self,
        ctx: &Context,
        nodes: &NodeClient,
        doc: &crate::membership::MembershipDoc,
        token: Option<&str>,
        pods: &[ObservedPod],
        statuses: &[Option<NodeStatus>],
    ) {
        let sends = pods.iter().zip(statuses).filter_map(|(p, s)| {
            let base = p.base.as_ref()?;
            let behind = s.as_ref().is_none_or(|s| s.epoch < doc.epoch);
            behind.then_some(async move {
                let result = nodes.deliver(base, token, doc).await;
                let label = match &result {
                    Ok(epoch) if *epoch >= doc.epoch => "ok",
                    Ok(_) => "rejected",
                    Err(_) => "error",
                };
                ctx.metrics
                    .deliveries
                    .get_or_create(&Metrics::result(label))
                    .inc();
                if let Err(e) = result {
                    info!(pod = %p.name, error = %e, "membership not delivered yet");
                }
            })
        });
        join_all(sends).await;
    }

    async fn sync_push_settings(
        &self,
        nodes: &NodeClient,
        token: Option<&str>,
        pods: &[ObservedPod],
    ) {
        let want = PushSettings {
            stop_push: self.spec.stop_push,
            push_delay_millis: u64::from(self.spec.push_delay_millis),
        };
        let port = self.spec.session.port;
        let public_bases: Vec<String> = pods
            .iter()
            .filter_map(|p| p.ip.as_ref().map(|ip| nodes.base(ip, port)))
            .collect();
        join_all(public_bases.iter().map(|base| async move {
            match nodes.push_settings(base, token).await {
                Ok(have) if have == want => {}
                Ok(_) => {
                    if let Err(e) = nodes.set_push_settings(base, token, want).await {
                        info!(node = %base, error = %e, "push settings not applied yet");
                    }
                }
                Err(e) => info!(node = %base, error = %e, "push settings not readable yet"),
            }
        }))
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_events(
        &self,
        ctx: &Context,
        plan: &MembershipPlan,
        before: &Membership,
        data_sts_before: Option<&StatefulSet>,
        data_sts_after: &StatefulSet,
        data_rollout: &RolloutPlan,
        session_rollout: &RolloutPlan,
    ) {
        let mut events: Vec<(EventType, &str, &str, String)> = Vec::new();
        for change in &plan.changes {
            let (type_, reason, note) = match change {
                MemberChange::Joined { name, address } => (
                    EventType::Normal,
                    "MemberJoining",
                    format!("{name} ({address}) joins the ring"),
                ),
                MemberChange::Synced { name } => (
                    EventType::Normal,
                    "MemberActive",
                    format!("{name} synced and is active"),
                ),
                MemberChange::Resyncing { name } => (
                    EventType::Warning,
                    "MemberResyncing",
                    format!("{name} restarted and resyncs"),
                ),
                MemberChange::Moved { name, from, to } => (
                    EventType::Normal,
                    "MemberMoved",
                    format!("{name} moved from {from} to {to}"),
                ),
                MemberChange::Leaving { name } => (
                    EventType::Normal,
                    "MemberLeaving",
                    format!("{name} leaves the ring and hands its data over"),
                ),
                MemberChange::Removed { name } => (
                    EventType::Normal,
                    "MemberRemoved",
                    format!("{name} left the membership"),
                ),
                MemberChange::Lost { name } if data_rollout.replaces(name) => (
                    EventType::Normal,
                    "MemberRestarting",
                    format!(
                        "{name} is being replaced by the upgrade; out of the ring until it is back"
                    ),
                ),
                MemberChange::Lost { name } => (
                    EventType::Warning,
                    "MemberLost",
                    format!("{name} is gone; removed from the ring"),
                ),
            };
            events.push((type_, reason, "Membership", note));
        }
        if plan.membership.epoch != before.epoch {
            events.push((
                EventType::Normal,
                "MembershipPublished",
                "Membership",
                membership_note(&plan.membership.document()),
            ));
        }
        let before_replicas = sts_replicas(data_sts_before);
        let after_replicas = sts_replicas(Some(data_sts_after));
        if let (Some(b), Some(a)) = (before_replicas, after_replicas) {
            if a != b {
                let reason = if a > b {
                    "ScaledUpData"
                } else {
                    "ScaledDownData"
                };
                events.push((
                    EventType::Normal,
                    reason,
                    "Scale",
                    format!("data StatefulSet {b} → {a} replicas"),
                ));
            }
        }
        for (tier, rollout) in [("data", data_rollout), ("session", session_rollout)] {
            match &rollout.state {
                RolloutState::Started => events.push((
                    EventType::Normal,
                    "RollingUpgradeStarted",
                    "Upgrade",
                    format!("new {tier} pod template; pods restart one at a time"),
                )),
                RolloutState::Rolling { ordinal, remaining } => events.push((
                    EventType::Normal,
                    "RollingUpgradeStep",
                    "Upgrade",
                    format!("replacing {tier} pod {ordinal} ({remaining} left)"),
                )),
                _ => {}
            }
        }
        let reference = self.object_ref(&());
        for (type_, reason, action, note) in events {
            let event = Event {
                type_,
                reason: reason.to_owned(),
                note: Some(bounded_note(note)),
                action: action.to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                warn!(error = %e, reason, "event not recorded");
            }
        }
    }
}

/// The API server refuses an event whose note is longer than this many bytes.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to [`EVENT_NOTE_LIMIT`] bytes at a character boundary, marked with `…`.
fn bounded_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    const MORE: &str = "…";
    let mut end = EVENT_NOTE_LIMIT - MORE.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &note[..end])
}

/// The `MembershipPublished` note: the epoch, the sizes, and as many addresses as fit (the
/// full document is in the status and the ConfigMap).
fn membership_note(doc: &registry_types::MembershipDoc) -> String {
    let mut note = format!(
        "epoch {}: {} in the ring, {} leaving",
        doc.epoch,
        doc.members.len(),
        doc.leaving.len()
    );
    let lists = [("ring", &doc.members), ("leaving", &doc.leaving)];
    for (label, list) in lists.iter().filter(|(_, l)| !l.is_empty()) {
        note.push_str(&format!("; {label} {}", list.join(", ")));
    }
    bounded_note(note)
}

/// What `run` watches.
pub struct RunConfig {
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
}

/// Runs the controller until `shutdown` resolves. Reconciles everything again each time
/// this replica becomes leader.
pub async fn run(
    config: RunConfig,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let clusters: Api<RegistryCluster> = api(&client, &config.namespace);
    let statefulsets: Api<StatefulSet> = api(&client, &config.namespace);
    let pods: Api<Pod> = api(&client, &config.namespace);
    let managed = format!("app.kubernetes.io/managed-by={MANAGER}");
    let became_leader = tokio_stream::wrappers::WatchStream::new(ctx.leader.clone())
        .filter(|leader| std::future::ready(*leader))
        .map(|_| ());
    ctx.metrics
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Controller::new(clusters, watcher::Config::default())
        .owns(statefulsets, watcher::Config::default().labels(&managed))
        .watches(
            pods,
            watcher::Config::default().labels(&managed),
            |pod: Pod| {
                let instance = pod.labels().get("app.kubernetes.io/instance")?.clone();
                Some(ObjectRef::<RegistryCluster>::new(&instance).within(&pod.namespace()?))
            },
        )
        .reconcile_all_on(became_leader)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn pod(name: &str, ip: Option<&str>, phase: &str, ready: bool, revision: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.to_owned());
        p.metadata.labels = Some(BTreeMap::from([(
            REVISION_LABEL.to_owned(),
            revision.to_owned(),
        )]));
        p.status = Some(PodStatus {
            phase: Some(phase.to_owned()),
            pod_ip: ip.map(str::to_owned),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn event_notes_stay_under_the_api_server_limit() {
        let doc = registry_types::MembershipDoc {
            epoch: 12,
            members: (0..100)
                .map(|i| format!("[fd00:1234:5678:9abc::{i:x}]:9622"))
                .collect(),
            leaving: vec!["10.0.0.9:9622".into()],
            signature: None,
            ids: Default::default(),
        };
        let note = membership_note(&doc);
        assert!(note.len() <= EVENT_NOTE_LIMIT, "{} bytes", note.len());
        assert!(note.starts_with("epoch 12: 100 in the ring, 1 leaving; ring [fd00"));
        assert!(note.ends_with('…'));
        let small = registry_types::MembershipDoc {
            epoch: 3,
            members: vec!["10.0.0.1:9622".into()],
            leaving: vec![],
            signature: None,
            ids: Default::default(),
        };
        assert_eq!(
            membership_note(&small),
            "epoch 3: 1 in the ring, 0 leaving; ring 10.0.0.1:9622"
        );
        // Multi-byte characters are never cut in half.
        let cut = bounded_note("é".repeat(EVENT_NOTE_LIMIT));
        assert!(cut.len() <= EVENT_NOTE_LIMIT && cut.ends_with('…'));
        assert_eq!(bounded_note("short".into()), "short");
    }

    #[test]
    fn only_running_pods_that_are_not_terminating_have_an_address() {
        let mut terminating = pod("r-data-2", Some("127.1.1.3"), "Running", true, "a");
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let pods = [
            pod("r-data-1", Some("127.1.1.2"), "Pending", false, "a"),
            pod("r-data-0", Some("127.1.1.1"), "Running", true, "a"),
            terminating,
            pod("r-data-3", None, "Running", false, "a"),
        ];
        let seen = observe_pods(&pods, &NodeClient::new(Duration::from_secs(1)), 9622);
        let names: Vec<_> = seen.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["r-data-0", "r-data-1", "r-data-2", "r-data-3"]);
        assert_eq!(seen[0].base.as_deref(), Some("http://127.1.1.1:9622"));
        let v6 = observe_pods(
            &[pod("r-data-0", Some("fd00::7"), "Running", true, "a")],
            &NodeClient::new(Duration::from_secs(1)),
            9622,
        );
        assert_eq!(v6[0].base.as_deref(), Some("http://[fd00::7]:9622"));
        assert!(seen[0].ready);
        for p in &seen[1..] {
            assert_eq!(p.base, None, "{}", p.name);
            assert!(!p.ready);
        }
    }

    fn sts(hash: &str, partition: i32, update_revision: &str) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(2);
        s.metadata.annotations = Some(BTreeMap::from([(
            TEMPLATE_HASH_ANNOTATION.to_owned(),
            hash.to_owned(),
        )]));
        s.spec.replicas = Some(2);
        s.spec.update_strategy = Some(k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(
                k8s_openapi::api::apps::v1::RollingUpdateStatefulSetStrategy {
                    partition: Some(partition),
                    ..Default::default()
                },
            ),
        });
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            update_revision: Some(update_revision.to_owned()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn rollout_reads_template_hash_partition_and_pod_revisions() {
        let pods = observe_pods(
            &[
                pod("r-data-0", Some("127.1.1.1"), "Running", true, "old"),
                pod("r-data-1", Some("127.1.1.2"), "Running", true, "old"),
            ],
            &NodeClient::new(Duration::from_secs(1)),
            9622,
        );
        // A new template: hold every pod.
        let plan = rollout_for(Some(&sts("h1", 0, "old")), "h2", 2, &pods, true);
        assert_eq!(plan.state, RolloutState::Started);
        assert_eq!(plan.partition, 2);
        // Applied; the set has a new update revision: release the highest pod.
        let plan = rollout_for(Some(&sts("h2", 2, "new")), "h2", 2, &pods, true);
        assert_eq!(plan.partition, 1);
        // Nothing to do when every pod runs the update revision.
        let plan = rollout_for(Some(&sts("h2", 1, "old")), "h2", 2, &pods, true);
        assert_eq!(plan.state, RolloutState::Complete);
        // No StatefulSet yet.
        assert_eq!(rollout_for(None, "h2", 2, &pods, false).partition, 0);
    }

    #[test]
    fn the_last_pod_away_for_its_replacement_is_still_being_replaced() {
        // r-data-1 already runs the new revision; r-data-0, the last, is deleted for its
        // replacement and not back yet: the set's current revision is still the old one.
        let pods = observe_pods(
            &[pod("r-data-1", Some("127.1.1.2"), "Running", true, "new")],
            &NodeClient::new(Duration::from_secs(1)),
            9622,
        );
        let mut rolling = sts("h2", 0, "new");
        rolling.status.as_mut().unwrap().current_revision = Some("old".to_owned());
        let plan = rollout_for(Some(&rolling), "h2", 2, &pods, true);
        assert_ne!(plan.state, RolloutState::Complete);
        assert!(plan.replaces("r-data-0"), "{plan:?}");
        // Once the set reports the rollout done, a missing pod is just missing.
        let mut rolled = sts("h2", 0, "new");
        rolled.status.as_mut().unwrap().current_revision = Some("new".to_owned());
        let plan = rollout_for(Some(&rolled), "h2", 2, &pods, true);
        assert_eq!(plan.state, RolloutState::Complete);
        assert!(!plan.replaces("r-data-0"));
    }
}
