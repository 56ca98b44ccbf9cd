//! The `Ready`, `Progressing` and `Degraded` conditions computed from what the reconciler
//! observed and planned. Pure.

use crate::membership::DataPhase;
use crate::rollout::RolloutState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

#[derive(Debug, Clone)]
pub struct Observation {
    pub generation: Option<i64>,
    pub desired_data: u32,
    pub ready_data: u32,
    pub desired_sessions: u32,
    pub ready_sessions: u32,
    pub epoch: u64,
    pub data_phase: DataPhase,
    pub ring_settled: bool,
    pub data_rollout: RolloutState,
    pub session_rollout: RolloutState,
    /// Members that dropped out of the ring in this pass.
    pub lost_members: Vec<String>,
    /// A problem that stops the operator from doing its job (missing Secret, API errors).
    pub problem: Option<(String, String)>,
}

/// The three conditions; `last_transition_time` is kept from `previous` when the status of
/// a condition did not change.
pub fn compute(obs: &Observation, previous: &[Condition], now: Time) -> Vec<Condition> {
    let (ready, ready_reason, ready_message) = if obs.ready_data < obs.desired_data {
        (
            false,
            "DataNodesNotReady",
            format!("{}/{} data nodes ready", obs.ready_data, obs.desired_data),
        )
    } else if obs.ready_sessions < obs.desired_sessions {
        (
            false,
            "SessionNodesNotReady",
            format!(
                "{}/{} session nodes ready",
                obs.ready_sessions, obs.desired_sessions
            ),
        )
    } else if obs.epoch == 0 || !obs.ring_settled {
        (
            false,
            "MembershipSettling",
            format!("membership epoch {} is settling", obs.epoch),
        )
    } else {
        (
            true,
            "ClusterReady",
            format!(
                "{} data and {} session nodes ready at membership epoch {}",
                obs.ready_data, obs.ready_sessions, obs.epoch
            ),
        )
    };

    let (progressing, progressing_reason, progressing_message) = progress(obs);

    let (degraded, degraded_reason, degraded_message) =
        if let Some((reason, message)) = &obs.problem {
            (true, reason.clone(), message.clone())
        } else if !obs.lost_members.is_empty() {
            (
                true,
                "MemberLost".to_owned(),
                format!(
                    "data node(s) {} left the ring unexpectedly",
                    obs.lost_members.join(", ")
                ),
            )
        } else {
            (
                false,
                "AsExpected".to_owned(),
                "no problems seen".to_owned(),
            )
        };

    vec![
        condition(
            READY,
            ready,
            ready_reason,
            ready_message,
            obs.generation,
            previous,
            &now,
        ),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
            obs.generation,
            previous,
            &now,
        ),
        condition(
            DEGRADED,
            degraded,
            &degraded_reason,
            degraded_message,
            obs.generation,
            previous,
            &now,
        ),
    ]
}

fn progress(obs: &Observation) -> (bool, &'static str, String) {
    match &obs.data_phase {
        DataPhase::Bootstrapping => {
            return (true, "Creating", "starting the first data nodes".into())
        }
        DataPhase::ScalingUp { from, to } => {
            return (
                true,
                "ScalingUpData",
                format!("data nodes {from} → {to}, one at a time"),
            )
        }
        DataPhase::ScalingDown {
            member,
            handed_over,
        } => {
            let msg = if *handed_over {
                format!("{member} handed over; shrinking the data StatefulSet")
            } else {
                format!("{member} is leaving; waiting for its handover")
            };
            return (true, "ScalingDownData", msg);
        }
        DataPhase::Settling | DataPhase::Stable => {}
    }
    match &obs.data_rollout {
        RolloutState::Started => {
            return (
                true,
                "RollingUpgradeData",
                "new pod template applied".into(),
            )
        }
        RolloutState::Rolling { ordinal, remaining } => {
            return (
                true,
                "RollingUpgradeData",
                format!("replacing data pod {ordinal}; {remaining} to go"),
            )
        }
        RolloutState::Waiting { next, remaining } => {
            return (
                true,
                "RollingUpgradeData",
                format!("data pod {next} waits for the ring to settle; {remaining} to go"),
            )
        }
        RolloutState::Complete => {}
    }
    match &obs.session_rollout {
        RolloutState::Started | RolloutState::Waiting { .. } | RolloutState::Rolling { .. } => {
            let msg = match &obs.session_rollout {
                RolloutState::Rolling { ordinal, remaining } => {
                    format!("replacing session pod {ordinal}; {remaining} to go")
                }
                _ => "session pods wait for their turn".to_owned(),
            };
            return (true, "RollingUpgradeSessions", msg);
        }
        RolloutState::Complete => {}
    }
    if obs.data_phase == DataPhase::Settling {
        return (
            true,
            "MembershipSettling",
            format!("nodes syncing to epoch {}", obs.epoch),
        );
    }
    if obs.ready_sessions != obs.desired_sessions || obs.ready_data != obs.desired_data {
        return (
            true,
            "PodsStarting",
            "waiting for pods to become ready".into(),
        );
    }
    (false, "Stable", "nothing in progress".into())
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// A condition message is at most 32768 bytes; API server messages are far shorter, but
/// one that is not must not make the status write fail too.
const MESSAGE_LIMIT: usize = 4096;

/// `previous` with `Degraded` set True for `reason` and `message` (the other conditions as
/// they were): for a failure that stopped a pass before the conditions were computed.
pub fn with_problem(
    previous: &[Condition],
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let mut end = message.len().min(MESSAGE_LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let degraded = condition(
        DEGRADED,
        true,
        reason,
        message[..end].to_owned(),
        generation,
        previous,
        &now,
    );
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != DEGRADED)
        .cloned()
        .collect();
    out.push(degraded);
    out
}

/// The condition of `type_`, if present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn stable() -> Observation {
        Observation {
            generation: Some(2),
            desired_data: 3,
            ready_data: 3,
            desired_sessions: 2,
            ready_sessions: 2,
            epoch: 4,
            data_phase: DataPhase::Stable,
            ring_settled: true,
            data_rollout: RolloutState::Complete,
            session_rollout: RolloutState::Complete,
            lost_members: vec![],
            problem: None,
        }
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn get<'a>(c: &'a [Condition], type_: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_settled_cluster_is_ready_and_not_progressing() {
        let c = compute(&stable(), &[], t(10));
        assert_eq!(get(&c, READY).status, "True");
        assert_eq!(get(&c, READY).reason, "ClusterReady");
        assert_eq!(get(&c, PROGRESSING).status, "False");
        assert_eq!(get(&c, DEGRADED).status, "False");
        assert_eq!(get(&c, READY).observed_generation, Some(2));
    }

    #[test]
    fn missing_nodes_or_settling_ring_is_not_ready() {
        let mut o = stable();
        o.ready_data = 2;
        assert_eq!(
            get(&compute(&o, &[], t(1)), READY).reason,
            "DataNodesNotReady"
        );
        let mut o = stable();
        o.ready_sessions = 1;
        assert_eq!(
            get(&compute(&o, &[], t(1)), READY).reason,
            "SessionNodesNotReady"
        );
        let mut o = stable();
        o.ring_settled = false;
        o.data_phase = DataPhase::Settling;
        let c = compute(&o, &[], t(1));
        assert_eq!(get(&c, READY).reason, "MembershipSettling");
        assert_eq!(get(&c, PROGRESSING).status, "True");
    }

    #[test]
    fn scaling_and_upgrades_show_as_progressing_with_reasons() {
        let mut o = stable();
        o.data_phase = DataPhase::ScalingDown {
            member: "r-data-4".into(),
            handed_over: false,
        };
        let c = compute(&o, &[], t(1));
        assert_eq!(get(&c, PROGRESSING).reason, "ScalingDownData");
        assert!(get(&c, PROGRESSING).message.contains("r-data-4"));
        let mut o = stable();
        o.data_rollout = RolloutState::Rolling {
            ordinal: 1,
            remaining: 2,
        };
        assert_eq!(
            get(&compute(&o, &[], t(1)), PROGRESSING).reason,
            "RollingUpgradeData"
        );
        let mut o = stable();
        o.session_rollout = RolloutState::Waiting {
            next: 1,
            remaining: 2,
        };
        assert_eq!(
            get(&compute(&o, &[], t(1)), PROGRESSING).reason,
            "RollingUpgradeSessions"
        );
    }

    #[test]
    fn problems_and_lost_members_are_degraded() {
        let mut o = stable();
        o.problem = Some((
            "TokenSecretMissing".into(),
            "secret s has no key token".into(),
        ));
        let c = compute(&o, &[], t(1));
        assert_eq!(get(&c, DEGRADED).status, "True");
        assert_eq!(get(&c, DEGRADED).reason, "TokenSecretMissing");
        let mut o = stable();
        o.lost_members = vec!["r-data-1".into()];
        assert_eq!(get(&compute(&o, &[], t(1)), DEGRADED).reason, "MemberLost");
    }

    #[test]
    fn a_refused_apply_is_degraded_with_the_api_servers_message() {
        let before = compute(&stable(), &[], t(10));
        let message = "applying Service reg.v1-data: Service \"reg.v1-data\" is invalid: \
                       metadata.name: Invalid value: \"reg.v1-data\": a DNS-1035 label must consist of ...";
        let c = with_problem(&before, "ApplyFailed", message, Some(3), t(20));
        assert_eq!(c.len(), 3);
        let d = get(&c, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ApplyFailed")
        );
        assert_eq!(d.message, message);
        assert_eq!(d.last_transition_time, t(20));
        assert_eq!(
            get(&c, READY),
            get(&before, READY),
            "other conditions are kept"
        );
        // The same failure again changes nothing (so the status is not rewritten).
        assert_eq!(with_problem(&c, "ApplyFailed", message, Some(3), t(30)), c);
        let long = "x".repeat(100_000);
        assert!(
            get(
                &with_problem(&c, "ApplyFailed", &long, None, t(40)),
                DEGRADED
            )
            .message
            .len()
                <= 4096
        );
    }

    #[test]
    fn transition_time_only_moves_when_the_status_changes() {
        let first = compute(&stable(), &[], t(10));
        let again = compute(&stable(), &first, t(20));
        assert_eq!(get(&again, READY).last_transition_time, t(10));
        let mut o = stable();
        o.ready_data = 1;
        let changed = compute(&o, &again, t(30));
        assert_eq!(get(&changed, READY).last_transition_time, t(30));
        assert_eq!(get(&changed, DEGRADED).last_transition_time, t(10));
    }
}
