//! The data-node membership state machine: who is in the ring, who joins and who leaves,
//! and how far the data StatefulSet may grow or shrink at this moment. Pure: the
//! reconciler feeds it observations and carries out the plan.

use crate::crd::{Member, MemberState, Membership};

/// The document every node adopts (docs/INTERNAL.md, "Membership document"), shared with
/// registry-node.
pub use registry_types::MembershipDoc;

impl Membership {
    /// Ring members (Joining and Active) and leaving members, in ordinal order.
    pub fn document(&self) -> MembershipDoc {
        let mut members = Vec::new();
        let mut leaving = Vec::new();
        for m in &self.members {
            match m.state {
                MemberState::Leaving => leaving.push(m.address.clone()),
                MemberState::Joining | MemberState::Active => members.push(m.address.clone()),
            }
        }
        // Ring identities: a member is placed by its pod's name, so a pod that comes back
        // at a new IP keeps its place on the ring (an upgrade moves nothing).
        let ids = self
            .members
            .iter()
            .map(|m| (m.address.clone(), m.name.clone()))
            .collect();
        MembershipDoc {
            epoch: self.epoch,
            members,
            leaving,
            signature: None,
            ids,
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Every member is Active and nobody is leaving.
    pub fn all_active(&self) -> bool {
        !self.members.is_empty() && self.members.iter().all(|m| m.state == MemberState::Active)
    }
}

/// The ordinal at the end of a StatefulSet pod name (`name-data-3` → 3).
pub fn ordinal_of(pod_name: &str) -> Option<u32> {
    pod_name.rsplit_once('-')?.1.parse().ok()
}

/// What a data node said about itself on `GET /internal/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeReport {
    pub epoch: u64,
    pub synced: bool,
    pub handover_complete: bool,
}

/// One data pod as observed from the API and from the node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPod {
    pub ordinal: u32,
    pub name: String,
    /// `podIP:9622` when the pod runs with an IP and is not being deleted.
    pub address: Option<String>,
    /// `None` when the node did not answer.
    pub report: Option<NodeReport>,
}

#[derive(Debug, Clone)]
pub struct MembershipInput<'a> {
    /// `spec.data.replicas`.
    pub desired_replicas: u32,
    /// `spec.replicas` of the data StatefulSet; `None` before it exists.
    pub statefulset_replicas: Option<u32>,
    /// The last published membership.
    pub current: &'a Membership,
    /// The highest epoch known anywhere (node reports, the operator's memory), so that a
    /// new epoch is never one some node has already seen with other content.
    pub highest_seen_epoch: u64,
    pub pods: &'a [DataPod],
    /// Data pods the StatefulSet is replacing right now (a rolling upgrade): a member whose
    /// pod is away for that keeps its place in the ring until the pod is back.
    pub replacing: &'a [String],
}

/// A change worth an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Joined {
        name: String,
        address: String,
    },
    Synced {
        name: String,
    },
    Resyncing {
        name: String,
    },
    Moved {
        name: String,
        from: String,
        to: String,
    },
    Leaving {
        name: String,
    },
    Removed {
        name: String,
    },
    Lost {
        name: String,
    },
}

/// Where the data tier is, for conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPhase {
    /// No ring yet: the first pods are starting.
    Bootstrapping,
    /// Ring members are joining or resyncing, or the last change is not yet delivered.
    Settling,
    ScalingUp {
        from: u32,
        to: u32,
    },
    /// `member` is leaving; the StatefulSet shrinks once it has handed over.
    ScalingDown {
        member: String,
        handed_over: bool,
    },
    Stable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipPlan {
    pub membership: Membership,
    /// `spec.replicas` to apply to the data StatefulSet.
    pub statefulset_replicas: u32,
    pub changes: Vec<MemberChange>,
    pub phase: DataPhase,
    /// Every member Active, nobody leaving, every answering node on the current epoch.
    pub settled: bool,
}

impl MembershipPlan {
    pub fn epoch_changed(&self, before: &Membership) -> bool {
        self.membership.epoch != before.epoch
    }
}

/// Decides the next membership and the data StatefulSet size.
///
/// Rules: a pod that should exist and runs joins as `Joining` and turns `Active` once it
/// reports `synced` on the current epoch; a member whose pod is gone leaves the ring
/// (`Lost`); a member whose address changed rejoins with the new one. Growth is one pod at
/// a time, only while the ring is settled. Shrinking is one member at a time, highest
/// ordinal first: it is marked `Leaving` (out of the ring) and the StatefulSet shrinks only
/// after that node reports `handoverComplete` on the epoch that has it leaving. Any change
/// of the document takes a new epoch, higher than every epoch seen before.
pub fn plan_membership(input: &MembershipInput<'_>) -> MembershipPlan {
    let current = input.current;
    let pod = |name: &str| input.pods.iter().find(|p| p.name == name);
    let sts_replicas = input.statefulset_replicas.unwrap_or(0);
    let mut changes = Vec::new();
    let mut members: Vec<Member> = Vec::new();

    for m in &current.members {
        let ordinal = ordinal_of(&m.name).unwrap_or(u32::MAX);
        let observed = pod(&m.name);
        let address = observed.and_then(|p| p.address.clone());
        match (m.state, address) {
            (MemberState::Leaving, None) => changes.push(MemberChange::Removed {
                name: m.name.clone(),
            }),
            // A leaving member that came back under a new address holds nothing any more.
            (MemberState::Leaving, Some(a)) if a != m.address => {
                changes.push(MemberChange::Removed {
                    name: m.name.clone(),
                })
            }
            // Away because the rollout replaces its pod: it stays where it is on the ring
            // (writes meanwhile go to the next owner) and comes back under its identity,
            // so the upgrade moves no datum. Joining holds the next rollout step until it
            // is back and synced.
            (_, None) if input.replacing.contains(&m.name) => {
                if m.state == MemberState::Active {
                    changes.push(MemberChange::Resyncing {
                        name: m.name.clone(),
                    });
                }
                members.push(Member {
                    state: MemberState::Joining,
                    ..m.clone()
                });
            }
            (_, None) => changes.push(MemberChange::Lost {
                name: m.name.clone(),
            }),
            (_, Some(a)) if a != m.address => {
                changes.push(MemberChange::Moved {
                    name: m.name.clone(),
                    from: m.address.clone(),
                    to: a.clone(),
                });
                members.push(Member {
                    name: m.name.clone(),
                    address: a,
                    state: MemberState::Joining,
                });
            }
            (_, Some(_)) if ordinal >= sts_replicas.max(input.desired_replicas) => {
                // Beyond every size the set may have: it is on its way out.
                changes.push(MemberChange::Removed {
                    name: m.name.clone(),
                })
            }
            _ => members.push(m.clone()),
        }
    }

    // Pods that should be members and run, but are not in the ring yet.
    let join_below = if current.members.is_empty() {
        input.desired_replicas
    } else {
        sts_replicas.min(input.desired_replicas)
    };
    let mut joiners: Vec<&DataPod> = input
        .pods
        .iter()
        .filter(|p| p.ordinal < join_below && p.address.is_some())
        .filter(|p| !members.iter().any(|m| m.name == p.name))
        .collect();
    joiners.sort_by_key(|p| p.ordinal);
    for p in joiners {
        let address = p.address.clone().unwrap_or_default();
        changes.push(MemberChange::Joined {
            name: p.name.clone(),
            address: address.clone(),
        });
        members.push(Member {
            name: p.name.clone(),
            address,
            state: MemberState::Joining,
        });
    }
    members.sort_by_key(|m| ordinal_of(&m.name).unwrap_or(u32::MAX));

    let bootstrapping = current.members.is_empty();
    let mut next = Membership {
        epoch: current.epoch,
        members,
    };
    let mut document_changed = next.document() != current.document();

    // Scaling decisions, one step at a time.
    let mut statefulset_replicas = sts_replicas;
    let mut phase = DataPhase::Stable;
    if bootstrapping {
        statefulset_replicas = input.desired_replicas;
        phase = DataPhase::Bootstrapping;
    } else if input.desired_replicas > sts_replicas {
        let ready_to_grow = !document_changed && ring_settled(&next, input.pods);
        if ready_to_grow {
            statefulset_replicas = sts_replicas + 1;
        }
        phase = DataPhase::ScalingUp {
            from: sts_replicas,
            to: input.desired_replicas,
        };
    } else if input.desired_replicas < sts_replicas {
        let top = sts_replicas - 1;
        let top_member = next
            .members
            .iter()
            .position(|m| ordinal_of(&m.name) == Some(top));
        match top_member {
            // The top pod never joined (or was lost): it holds nothing, drop it.
            None => {
                statefulset_replicas = top;
                phase = DataPhase::ScalingDown {
                    member: format!("ordinal {top}"),
                    handed_over: true,
                };
            }
            Some(i) if next.members[i].state != MemberState::Leaving => {
                let others_in_ring = next
                    .members
                    .iter()
                    .filter(|m| m.state != MemberState::Leaving)
                    .count()
                    > 1;
                let may_start = !document_changed
                    && others_in_ring
                    && !next.members.iter().any(|m| m.state == MemberState::Leaving);
                if may_start {
                    next.members[i].state = MemberState::Leaving;
                    changes.push(MemberChange::Leaving {
                        name: next.members[i].name.clone(),
                    });
                    document_changed = true;
                }
                phase = DataPhase::ScalingDown {
                    member: next.members[i].name.clone(),
                    handed_over: false,
                };
            }
            Some(i) => {
                let name = next.members[i].name.clone();
                let report = input
                    .pods
                    .iter()
                    .find(|p| p.name == name)
                    .and_then(|p| p.report);
                let handed_over = !document_changed
                    && report.is_some_and(|r| r.handover_complete && r.epoch >= current.epoch);
                if handed_over {
                    statefulset_replicas = top;
                }
                phase = DataPhase::ScalingDown {
                    member: name,
                    handed_over,
                };
            }
        }
    }

    if document_changed {
        // Saturating: an epoch reported at u64::MAX (a node that ran without a membership key)
        // must not wrap the next epoch around to 0.
        next.epoch = current
            .epoch
            .max(input.highest_seen_epoch)
            .saturating_add(1);
    } else {
        // State changes that do not touch the document: promotion and resync.
        for m in next.members.iter_mut() {
            let Some(report) = input
                .pods
                .iter()
                .find(|p| p.name == m.name)
                .and_then(|p| p.report)
            else {
                continue;
            };
            match m.state {
                MemberState::Joining if report.epoch >= next.epoch && report.synced => {
                    m.state = MemberState::Active;
                    changes.push(MemberChange::Synced {
                        name: m.name.clone(),
                    });
                }
                MemberState::Active if report.epoch < next.epoch && !report.synced => {
                    m.state = MemberState::Joining;
                    changes.push(MemberChange::Resyncing {
                        name: m.name.clone(),
                    });
                }
                _ => {}
            }
        }
    }

    let settled = !document_changed && ring_settled(&next, input.pods);
    if phase == DataPhase::Stable && !settled {
        phase = DataPhase::Settling;
    }
    MembershipPlan {
        membership: next,
        statefulset_replicas,
        changes,
        phase,
        settled,
    }
}

/// Every member Active and nobody leaving, and no answering node behind the epoch.
fn ring_settled(membership: &Membership, pods: &[DataPod]) -> bool {
    membership.all_active()
        && membership.members.iter().all(|m| {
            pods.iter()
                .find(|p| p.name == m.name)
                .and_then(|p| p.report)
                .is_some_and(|r| r.epoch >= membership.epoch)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_trust::MembershipSigner;

    fn pod(i: u32, report: Option<(u64, bool, bool)>) -> DataPod {
        DataPod {
            ordinal: i,
            name: format!("r-data-{i}"),
            address: Some(format!("127.0.1.{}:9622", i + 1)),
            report: report.map(|(epoch, synced, handover_complete)| NodeReport {
                epoch,
                synced,
                handover_complete,
            }),
        }
    }

    fn member(i: u32, state: MemberState) -> Member {
        Member {
            name: format!("r-data-{i}"),
            address: format!("127.0.1.{}:9622", i + 1),
            state,
        }
    }

    fn active(n: u32, epoch: u64) -> Membership {
        Membership {
            epoch,
            members: (0..n).map(|i| member(i, MemberState::Active)).collect(),
        }
    }

    fn plan(
        desired: u32,
        sts: Option<u32>,
        current: &Membership,
        pods: &[DataPod],
    ) -> MembershipPlan {
        plan_membership(&MembershipInput {
            desired_replicas: desired,
            statefulset_replicas: sts,
            current,
            highest_seen_epoch: current.epoch,
            pods,
            replacing: &[],
        })
    }

    #[test]
    fn bootstrap_creates_the_set_and_adds_running_pods_as_joining() {
        let empty = Membership::default();
        let p = plan(3, None, &empty, &[]);
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(p.phase, DataPhase::Bootstrapping);
        assert_eq!(p.membership.epoch, 0);

        let pods = [pod(0, Some((0, false, false))), pod(2, None)];
        let p = plan(3, Some(3), &empty, &pods);
        assert_eq!(p.membership.epoch, 1);
        assert_eq!(
            p.membership.members,
            vec![
                member(0, MemberState::Joining),
                member(2, MemberState::Joining)
            ]
        );
        assert_eq!(
            p.membership.document().members,
            ["127.0.1.1:9622", "127.0.1.3:9622"]
        );
        assert!(!p.settled);
    }

    #[test]
    fn joining_turns_active_only_when_synced_on_the_current_epoch() {
        let mut m = active(2, 4);
        m.members[1].state = MemberState::Joining;
        let p = plan(
            2,
            Some(2),
            &m,
            &[
                pod(0, Some((4, true, false))),
                pod(1, Some((3, true, false))),
            ],
        );
        assert_eq!(p.membership.members[1].state, MemberState::Joining);
        assert_eq!(p.membership.epoch, 4);
        let p = plan(
            2,
            Some(2),
            &m,
            &[
                pod(0, Some((4, true, false))),
                pod(1, Some((4, false, false))),
            ],
        );
        assert_eq!(p.membership.members[1].state, MemberState::Joining);
        let p = plan(
            2,
            Some(2),
            &m,
            &[
                pod(0, Some((4, true, false))),
                pod(1, Some((4, true, false))),
            ],
        );
        assert_eq!(p.membership.members[1].state, MemberState::Active);
        assert_eq!(
            p.membership.epoch, 4,
            "a state change alone keeps the epoch"
        );
        assert_eq!(
            p.changes,
            vec![MemberChange::Synced {
                name: "r-data-1".into()
            }]
        );
        assert!(p.settled);
        assert_eq!(p.phase, DataPhase::Stable);
    }

    #[test]
    fn scale_up_grows_one_pod_at_a_time_while_settled() {
        let m = active(3, 5);
        let synced: Vec<_> = (0..3).map(|i| pod(i, Some((5, true, false)))).collect();
        let p = plan(5, Some(3), &m, &synced);
        assert_eq!(p.statefulset_replicas, 4);
        assert_eq!(p.phase, DataPhase::ScalingUp { from: 3, to: 5 });

        // The new pod runs: it joins with a new epoch, and the set does not grow further.
        let mut pods = synced.clone();
        pods.push(pod(3, Some((0, false, false))));
        let p = plan(5, Some(4), &m, &pods);
        assert_eq!(p.membership.epoch, 6);
        assert_eq!(p.membership.members[3], member(3, MemberState::Joining));
        assert_eq!(p.statefulset_replicas, 4);

        // Still joining: no growth.
        let m = p.membership;
        let mut pods: Vec<_> = (0..3).map(|i| pod(i, Some((6, true, false)))).collect();
        pods.push(pod(3, Some((6, false, false))));
        let p = plan(5, Some(4), &m, &pods);
        assert_eq!(p.statefulset_replicas, 4);
        pods[3] = pod(3, Some((6, true, false)));
        let p = plan(5, Some(4), &m, &pods);
        assert_eq!(p.membership.members[3].state, MemberState::Active);
        // Promotion in this pass; growth waits for the next pass so nodes see a settled ring.
        let p2 = plan(5, Some(4), &p.membership, &pods);
        assert_eq!(p2.statefulset_replicas, 5);
    }

    #[test]
    fn scale_down_marks_highest_leaving_then_waits_for_handover_then_shrinks() {
        let m = active(3, 7);
        let pods: Vec<_> = (0..3).map(|i| pod(i, Some((7, true, false)))).collect();
        let p = plan(2, Some(3), &m, &pods);
        assert_eq!(p.membership.epoch, 8);
        assert_eq!(p.membership.members[2].state, MemberState::Leaving);
        assert_eq!(p.membership.document().members.len(), 2);
        assert_eq!(p.membership.document().leaving, ["127.0.1.3:9622"]);
        assert_eq!(
            p.statefulset_replicas, 3,
            "never shrink before the handover"
        );

        let m = p.membership;
        // Handover reported on an older epoch does not count.
        let mut pods: Vec<_> = (0..3).map(|i| pod(i, Some((8, true, false)))).collect();
        pods[2] = pod(2, Some((7, true, true)));
        assert_eq!(plan(2, Some(3), &m, &pods).statefulset_replicas, 3);
        pods[2] = pod(2, Some((8, false, false)));
        let p = plan(2, Some(3), &m, &pods);
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(
            p.phase,
            DataPhase::ScalingDown {
                member: "r-data-2".into(),
                handed_over: false
            }
        );
        // Unreachable leaving node: still wait.
        pods[2].report = None;
        assert_eq!(plan(2, Some(3), &m, &pods).statefulset_replicas, 3);
        pods[2] = pod(2, Some((8, false, true)));
        let p = plan(2, Some(3), &m, &pods);
        assert_eq!(p.statefulset_replicas, 2);
        assert_eq!(p.membership.epoch, 8);

        // The pod is gone: it leaves the document with a new epoch.
        pods.pop();
        let p = plan(2, Some(2), &m, &pods);
        assert_eq!(p.membership.epoch, 9);
        assert_eq!(p.membership.members.len(), 2);
        assert!(p.membership.document().leaving.is_empty());
        assert_eq!(
            p.changes,
            vec![MemberChange::Removed {
                name: "r-data-2".into()
            }]
        );
    }

    #[test]
    fn scale_down_by_several_goes_one_member_at_a_time() {
        let mut m = active(5, 10);
        m.members[4].state = MemberState::Leaving;
        let pods: Vec<_> = (0..5).map(|i| pod(i, Some((10, true, false)))).collect();
        let p = plan(2, Some(5), &m, &pods);
        let leaving: Vec<_> = p
            .membership
            .members
            .iter()
            .filter(|m| m.state == MemberState::Leaving)
            .collect();
        assert_eq!(leaving.len(), 1, "only one leaver at a time");
        assert_eq!(p.statefulset_replicas, 5);
    }

    #[test]
    fn a_top_pod_that_never_joined_is_dropped_without_handover() {
        let m = active(1, 3);
        let p = plan(1, Some(2), &m, &[pod(0, Some((3, true, false)))]);
        // ordinal 1 is not a member: it holds nothing and is dropped at once.
        assert_eq!(p.statefulset_replicas, 1);
        assert_eq!(p.membership.epoch, 3);
    }

    #[test]
    fn a_lost_pod_leaves_the_ring_and_rejoins_when_back() {
        let m = active(3, 4);
        let mut pods: Vec<_> = (0..3).map(|i| pod(i, Some((4, true, false)))).collect();
        pods.remove(1);
        let p = plan(3, Some(3), &m, &pods);
        assert_eq!(p.membership.epoch, 5);
        assert_eq!(p.membership.members.len(), 2);
        assert_eq!(
            p.changes,
            vec![MemberChange::Lost {
                name: "r-data-1".into()
            }]
        );

        pods.insert(1, pod(1, Some((0, false, false))));
        let p = plan(3, Some(3), &p.membership, &pods);
        assert_eq!(p.membership.epoch, 6);
        assert_eq!(p.membership.members[1], member(1, MemberState::Joining));
    }

    #[test]
    fn a_member_the_operator_cannot_reach_is_not_declared_dead() {
        // Issue 19: a data pod cut off from the operator (its status call fails) but running,
        // with its IP, keeps its place and state in the ring: only the pod's disappearance
        // (or a new address) takes a member out, never the operator's own lost sight of it.
        for state in [MemberState::Active, MemberState::Joining] {
            let mut m = active(3, 4);
            m.members[1].state = state;
            let pods = [
                pod(0, Some((4, true, false))),
                pod(1, None),
                pod(2, Some((4, true, false))),
            ];
            for _ in 0..3 {
                let p = plan(3, Some(3), &m, &pods);
                assert_eq!(p.membership, m, "membership unchanged ({state:?})");
                assert!(p.changes.is_empty(), "{:?}", p.changes);
                assert_eq!(p.statefulset_replicas, 3);
            }
        }
    }

    #[test]
    fn a_restarted_member_resyncs_and_a_moved_one_rejoins() {
        let m = active(2, 4);
        let p = plan(
            2,
            Some(2),
            &m,
            &[
                pod(0, Some((4, true, false))),
                pod(1, Some((0, false, false))),
            ],
        );
        assert_eq!(p.membership.members[1].state, MemberState::Joining);
        assert_eq!(p.membership.epoch, 4);
        assert!(!p.settled);

        let mut moved = pod(1, None);
        moved.address = Some("127.0.9.9:9622".into());
        let p = plan(2, Some(2), &m, &[pod(0, Some((4, true, false))), moved]);
        assert_eq!(p.membership.epoch, 5);
        assert_eq!(p.membership.members[1].address, "127.0.9.9:9622");
        assert_eq!(p.membership.members[1].state, MemberState::Joining);
    }

    #[test]
    fn a_member_replaced_by_the_rollout_keeps_its_place_on_the_ring() {
        let m = active(3, 4);
        let before = m.document();
        assert_eq!(before.ids["127.0.1.2:9622"], "r-data-1");
        // The rollout deleted r-data-1's pod: it stays in the ring, Joining, same document.
        let pods = [
            pod(0, Some((4, true, false))),
            pod(2, Some((4, true, false))),
        ];
        let p = plan_membership(&MembershipInput {
            desired_replicas: 3,
            statefulset_replicas: Some(3),
            current: &m,
            highest_seen_epoch: 4,
            pods: &pods,
            replacing: &["r-data-1".into()],
        });
        assert_eq!(p.membership.epoch, 4, "the document did not change");
        assert_eq!(p.membership.members[1].state, MemberState::Joining);
        assert_eq!(p.membership.document().members, before.members);
        assert!(!p.settled, "the next pod waits for this one");
        // Back at a new IP: the document maps the new address to the same identity, so
        // the ring places every member where it was.
        let mut back = pod(1, Some((0, false, false)));
        back.address = Some("127.0.7.7:9622".into());
        let pods = [pods[0].clone(), back, pods[1].clone()];
        let p = plan(3, Some(3), &p.membership, &pods);
        assert_eq!(p.membership.epoch, 5);
        let doc = p.membership.document();
        assert_eq!(doc.ids["127.0.7.7:9622"], "r-data-1");
        let keys = |d: &MembershipDoc| {
            let mut k: Vec<String> = d.members.iter().map(|a| d.ring_key(a).to_owned()).collect();
            k.sort();
            k
        };
        assert_eq!(keys(&doc), keys(&before));
        // Without the rollout, a pod that is gone leaves the ring as before.
        let p = plan(3, Some(3), &m, &[pod(0, Some((4, true, false)))]);
        assert_eq!(p.membership.members.len(), 1);
    }

    #[test]
    fn new_epoch_is_above_every_epoch_seen() {
        let m = active(2, 4);
        let pods = [pod(0, Some((9, true, false)))];
        let p = plan_membership(&MembershipInput {
            desired_replicas: 2,
            statefulset_replicas: Some(2),
            current: &m,
            highest_seen_epoch: 9,
            pods: &pods,
            replacing: &[],
        });
        assert_eq!(p.membership.epoch, 10);
    }

    #[test]
    fn the_next_epoch_never_wraps() {
        let m = active(2, 4);
        let p = plan_membership(&MembershipInput {
            desired_replicas: 1,
            statefulset_replicas: Some(2),
            current: &m,
            highest_seen_epoch: u64::MAX,
            pods: &[
                pod(0, Some((4, true, false))),
                pod(1, Some((4, true, false))),
            ],
            replacing: &[],
        });
        assert_eq!(p.membership.epoch, u64::MAX);
    }

    #[test]
    fn a_signed_document_verifies_with_the_cluster_key_and_only_as_it_is() {
        let signer = MembershipSigner::generate();
        let doc = active(2, 6).document().signed(&signer);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["epoch"], 6);
        assert!(json["signature"].is_string(), "{json}");
        let key = signer.public_key();
        assert_eq!(key.verify(doc.fields(), doc.signature.as_deref()), Ok(()));
        let mut forged = doc.clone();
        forged.epoch = u64::MAX;
        assert!(key
            .verify(forged.fields(), forged.signature.as_deref())
            .is_err());
        assert!(active(2, 6).document().signature.is_none());
    }

    #[test]
    fn ordinal_parses_the_suffix() {
        assert_eq!(ordinal_of("my-reg-data-12"), Some(12));
        assert_eq!(ordinal_of("nodash"), None);
        assert_eq!(ordinal_of("x-y"), None);
    }
}
