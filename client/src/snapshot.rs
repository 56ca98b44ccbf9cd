//! Turning SSE events into snapshots, and the filter that keeps a subscription's snapshots
//! from ever going backwards in version (pure, no I/O).

use crate::model::Snapshot;
use eventsource_stream::Event;

/// The SSE event type of a push (API.md).
pub const PUSH_EVENT: &str = "push";

/// What could not be decoded from an event's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable push event (id {id:?}): {message}")]
pub struct DecodeError {
    pub id: String,
    pub message: String,
}

/// The snapshot carried by a `push` event; `Ok(None)` for any other event type, which a
/// newer server may add and this client ignores.
pub fn decode_event(event: &Event) -> Result<Option<Snapshot>, DecodeError> {
    if event.event != PUSH_EVENT {
        return Ok(None);
    }
    serde_json::from_str::<Snapshot>(&event.data)
        .map(Some)
        .map_err(|err| DecodeError {
            id: event.id.clone(),
            message: err.to_string(),
        })
}

/// What to do with a snapshot given the last one delivered for the same subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than anything delivered: deliver it.
    Deliver,
    /// Same version as the last delivered one (the full push after a stream reopens, or a
    /// re-registration): nothing new, drop it.
    Repeat,
    /// Older than the last delivered one (a lagging node after failover): drop it.
    Stale,
}

/// The last delivered version of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonotonicFilter {
    last: Option<u64>,
}

impl MonotonicFilter {
    pub fn new() -> MonotonicFilter {
        MonotonicFilter::default()
    }

    /// Judges `version` and, when it is to be delivered, remembers it.
    pub fn offer(&mut self, version: u64) -> Verdict {
        match self.last {
            Some(last) if version < last => Verdict::Stale,
            Some(last) if version == last => Verdict::Repeat,
            _ => {
                self.last = Some(version);
                Verdict::Deliver
            }
        }
    }

    pub fn last_delivered(&self) -> Option<u64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> Event {
        Event {
            event: kind.to_owned(),
            data: data.to_owned(),
            id: "7".to_owned(),
            retry: None,
        }
    }

    #[test]
    fn push_event_decodes_to_snapshot() {
        let data = r#"{"registerId":"s1","dataInfoId":"echo#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP",
            "dataId":"echo","group":"DEFAULT_GROUP","instanceId":"DEFAULT_INSTANCE_ID",
            "version":12,"zones":{"z1":["a","b"],"z0":["c"]},"someFutureField":true}"#;
        let snapshot = decode_event(&event("push", data)).unwrap().unwrap();
        assert_eq!(snapshot.register_id, "s1");
        assert_eq!(snapshot.version, 12);
        assert_eq!(snapshot.all_data().collect::<Vec<_>>(), vec!["c", "a", "b"]);
    }

    #[test]
    fn empty_zones_decode_and_missing_zones_mean_empty() {
        let data = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","version":0,"zones":{}}"#;
        let snapshot = decode_event(&event("push", data)).unwrap().unwrap();
        assert!(snapshot.zones.is_empty());
        let data = r#"{"registerId":"s1","dataInfoId":"x#@#i#@#g","dataId":"x","group":"g",
            "instanceId":"i","version":3}"#;
        assert!(decode_event(&event("push", data))
            .unwrap()
            .unwrap()
            .zones
            .is_empty());
    }

    #[test]
    fn other_event_types_are_ignored() {
        assert_eq!(decode_event(&event("message", "hello")), Ok(None));
        assert_eq!(decode_event(&event("session", "{}")), Ok(None));
    }

    #[test]
    fn malformed_push_is_an_error_naming_the_event() {
        let err = decode_event(&event("push", r#"{"registerId":"s1"}"#)).unwrap_err();
        assert_eq!(err.id, "7");
        assert!(err.message.contains("missing field"), "{}", err.message);
        assert!(decode_event(&event("push", "not json")).is_err());
        assert!(decode_event(&event("push", r#"{"registerId":"s1","dataInfoId":"x","dataId":"x","group":"g","instanceId":"i","version":-1}"#)).is_err());
    }

    #[test]
    fn filter_never_goes_backwards() {
        let mut filter = MonotonicFilter::new();
        assert_eq!(filter.last_delivered(), None);
        assert_eq!(filter.offer(0), Verdict::Deliver);
        assert_eq!(filter.offer(5), Verdict::Deliver);
        assert_eq!(filter.offer(5), Verdict::Repeat);
        assert_eq!(filter.offer(4), Verdict::Stale);
        assert_eq!(filter.offer(0), Verdict::Stale);
        assert_eq!(filter.last_delivered(), Some(5));
        assert_eq!(filter.offer(6), Verdict::Deliver);
        assert_eq!(filter.last_delivered(), Some(6));
    }

    #[test]
    fn delivered_sequence_is_strictly_increasing_for_any_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..100 {
            let mut filter = MonotonicFilter::new();
            let mut delivered = Vec::new();
            for _ in 0..50 {
                let version = rng.random_range(0..30u64);
                if filter.offer(version) == Verdict::Deliver {
                    delivered.push(version);
                }
            }
            assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
        }
    }
}
