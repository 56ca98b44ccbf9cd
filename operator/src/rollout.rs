//! Rolling upgrades through the StatefulSet partition: one pod at a time, highest ordinal
//! first, each step only when the previous pod is back and the caller's gate (ring settled,
//! data tier done) is open. Pure.

/// One pod of a StatefulSet as far as the rollout cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRevision {
    pub ordinal: u32,
    /// The pod runs the StatefulSet's update revision.
    pub updated: bool,
    pub ready: bool,
}

#[derive(Debug, Clone)]
pub struct RolloutInput<'a> {
    /// `spec.replicas` the StatefulSet will have.
    pub replicas: u32,
    /// The desired pod template differs from the one the StatefulSet has now.
    pub template_changed: bool,
    /// The StatefulSet status describes its current spec (observedGeneration caught up).
    pub status_current: bool,
    /// The partition the StatefulSet has now (0 when none).
    pub current_partition: u32,
    pub pods: &'a [PodRevision],
    /// The caller's condition for letting the next pod go (ring settled, data tier done).
    pub gate_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Every pod runs the current template.
    Complete,
    /// A new template was just applied; no pod may restart yet.
    Started,
    /// `ordinal` is being replaced.
    Rolling { ordinal: u32, remaining: u32 },
    /// The next pod waits for the gate or for the previous pod to be ready.
    Waiting { next: u32, remaining: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPlan {
    /// `spec.updateStrategy.rollingUpdate.partition` to apply.
    pub partition: u32,
    pub state: RolloutState,
}

impl RolloutPlan {
    /// The pod named `pod` (a StatefulSet pod name) is released to the rollout: it may be
    /// down because it is being replaced.
    pub fn replaces(&self, pod: &str) -> bool {
        self.state != RolloutState::Complete
            && crate::membership::ordinal_of(pod).is_some_and(|o| o >= self.partition)
    }
}

pub fn plan_rollout(input: &RolloutInput<'_>) -> RolloutPlan {
    if input.template_changed {
        return RolloutPlan {
            partition: input.replicas,
            state: RolloutState::Started,
        };
    }
    if !input.status_current {
        return RolloutPlan {
            partition: input.current_partition.min(input.replicas),
            state: RolloutState::Waiting {
                next: input.current_partition,
                remaining: input.replicas,
            },
        };
    }
    let outdated: Vec<u32> = input
        .pods
        .iter()
        .filter(|p| p.ordinal < input.replicas && !p.updated)
        .map(|p| p.ordinal)
        .collect();
    let Some(&highest) = outdated.iter().max() else {
        return RolloutPlan {
            partition: 0,
            state: RolloutState::Complete,
        };
    };
    let remaining = outdated.len() as u32;
    // Pods above the next one must all be back and ready before it goes.
    let above_ready = (highest + 1..input.replicas).all(|o| {
        input
            .pods
            .iter()
            .any(|p| p.ordinal == o && p.ready && p.updated)
    });
    let in_progress = input.current_partition <= highest;
    if in_progress || (input.gate_open && above_ready) {
        RolloutPlan {
            partition: highest,
            state: RolloutState::Rolling {
                ordinal: highest,
                remaining,
            },
        }
    } else {
        RolloutPlan {
            partition: highest + 1,
            state: RolloutState::Waiting {
                next: highest,
                remaining,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(updated: &[bool]) -> Vec<PodRevision> {
        updated
            .iter()
            .enumerate()
            .map(|(i, &u)| PodRevision {
                ordinal: i as u32,
                updated: u,
                ready: true,
            })
            .collect()
    }

    fn input(pods: &[PodRevision], partition: u32, gate: bool) -> RolloutInput<'_> {
        RolloutInput {
            replicas: pods.len() as u32,
            template_changed: false,
            status_current: true,
            current_partition: partition,
            pods,
            gate_open: gate,
        }
    }

    #[test]
    fn a_new_template_holds_every_pod() {
        let p = pods(&[true, true, true]);
        let mut i = input(&p, 0, true);
        i.template_changed = true;
        assert_eq!(
            plan_rollout(&i),
            RolloutPlan {
                partition: 3,
                state: RolloutState::Started
            }
        );
    }

    #[test]
    fn releases_the_highest_outdated_pod_only_when_the_gate_is_open() {
        let p = pods(&[false, false, false]);
        assert_eq!(plan_rollout(&input(&p, 3, false)).partition, 3);
        let plan = plan_rollout(&input(&p, 3, true));
        assert_eq!(plan.partition, 2);
        assert_eq!(
            plan.state,
            RolloutState::Rolling {
                ordinal: 2,
                remaining: 3
            }
        );
    }

    #[test]
    fn keeps_a_released_pod_released_until_it_is_replaced() {
        let p = pods(&[false, false, false]);
        // Gate closed while pod 2 is being replaced: do not raise the partition back.
        assert_eq!(plan_rollout(&input(&p, 2, false)).partition, 2);
    }

    #[test]
    fn waits_for_the_replaced_pod_to_be_ready_before_the_next() {
        let mut p = pods(&[false, false, true]);
        p[2].ready = false;
        let plan = plan_rollout(&input(&p, 2, true));
        assert_eq!(plan.partition, 2);
        assert_eq!(
            plan.state,
            RolloutState::Waiting {
                next: 1,
                remaining: 2
            }
        );
        p[2].ready = true;
        assert_eq!(plan_rollout(&input(&p, 2, true)).partition, 1);
    }

    #[test]
    fn a_missing_pod_above_blocks_the_next_step() {
        let p = vec![PodRevision {
            ordinal: 0,
            updated: false,
            ready: true,
        }];
        let mut i = input(&p, 2, true);
        i.replicas = 2;
        assert_eq!(plan_rollout(&i).partition, 1);
    }

    #[test]
    fn names_the_pod_it_replaces() {
        let p = pods(&[false, false, false]);
        let plan = plan_rollout(&input(&p, 3, true));
        assert!(plan.replaces("reg-data-2"));
        assert!(!plan.replaces("reg-data-1"));
        // Pod 2 replaced, pod 1 waits: 2 may still be coming back.
        let p = pods(&[false, false, true]);
        let mut i = input(&p, 2, false);
        i.gate_open = false;
        let plan = plan_rollout(&i);
        assert_eq!(plan.partition, 2);
        assert!(plan.replaces("reg-data-2"));
        assert!(!RolloutPlan {
            partition: 0,
            state: RolloutState::Complete
        }
        .replaces("reg-data-0"));
    }

    #[test]
    fn complete_when_every_pod_is_updated() {
        let p = pods(&[true, true]);
        assert_eq!(
            plan_rollout(&input(&p, 1, false)),
            RolloutPlan {
                partition: 0,
                state: RolloutState::Complete
            }
        );
    }

    #[test]
    fn stale_status_keeps_the_partition() {
        let p = pods(&[false, false]);
        let mut i = input(&p, 2, true);
        i.status_current = false;
        assert_eq!(plan_rollout(&i).partition, 2);
    }
}
