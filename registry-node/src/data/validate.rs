//! What a data node checks of everything other nodes send it (SECURITY.md, "Data nodes
//! trust nothing they can check"): the same names, sizes and counts the public API allows a
//! publisher, plus bounds on versions and timestamps, so that a forged write can neither
//! break a datum nor win every future merge (a `u64::MAX` version no real write beats).
//!
//! A request that fails any check is refused whole (`400 invalid_argument`, the message
//! names the entry) before anything is applied.

use crate::data::store::DatumImage;
use crate::http::error::ApiError;
use crate::http::validate::{check_name, check_register_id, MAX_DATA_ITEMS, MAX_DATA_ITEM_BYTES};
use crate::model::{DataInfoId, Publisher, PublisherOp, ServiceKey};

/// A publisher's own version starts at 1 and grows by one per replacement: nothing real
/// gets near 2^53 (and every version stays exact as a JSON number).
pub const MAX_PUBLISHER_VERSION: u64 = 1 << 53;
/// How far ahead of this node's clock a write's timestamp may be (clock skew between
/// nodes, and the hybrid clocks that follow the highest stamp seen).
pub const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;
/// Entries in one request (ops, images or ids); senders batch far below this.
pub const MAX_ENTRIES_PER_REQUEST: usize = 100_000;

fn invalid(message: String) -> ApiError {
    ApiError::InvalidArgument(message)
}

/// The highest datum version a peer may send: datum versions are a hybrid clock of
/// microseconds (`max(previous + 1, now_ms * 1000)`, store.rs).
pub fn max_datum_version(now_ms: u64) -> u64 {
    now_ms
        .saturating_add(MAX_CLOCK_AHEAD_MS)
        .saturating_mul(1000)
}

fn check_count(field: &str, n: usize) -> Result<(), ApiError> {
    if n > MAX_ENTRIES_PER_REQUEST {
        return Err(invalid(format!(
            "{field} has {n} entries, at most {MAX_ENTRIES_PER_REQUEST} are allowed"
        )));
    }
    Ok(())
}

/// A dataInfoId as the session layer builds it: three valid names joined by `#@#`.
pub fn check_data_info_id(field: &str, id: &str) -> Result<(), ApiError> {
    let key = ServiceKey::parse(id).ok_or_else(|| {
        invalid(format!(
            "{field} must be dataId#@#instanceId#@#group, got {} bytes that are not",
            id.len()
        ))
    })?;
    check_name(&format!("{field}.dataId"), &key.data_id)?;
    check_name(&format!("{field}.instanceId"), &key.instance_id)?;
    check_name(&format!("{field}.group"), &key.group)
}

/// A version and timestamp pair of a write or removal.
fn check_stamp(field: &str, version: u64, timestamp: u64, now_ms: u64) -> Result<(), ApiError> {
    if version == 0 || version > MAX_PUBLISHER_VERSION {
        return Err(invalid(format!(
            "{field}.version must be from 1 to {MAX_PUBLISHER_VERSION}, got {version}"
        )));
    }
    let latest = now_ms.saturating_add(MAX_CLOCK_AHEAD_MS);
    if timestamp > latest {
        return Err(invalid(format!(
            "{field}.registerTimestamp {timestamp} is more than {MAX_CLOCK_AHEAD_MS} ms ahead of this node's clock ({now_ms})"
        )));
    }
    Ok(())
}

/// A publisher, checked as the public API checks one (names, registerId, data items) plus
/// its version and timestamp.
pub fn check_publisher(field: &str, p: &Publisher, now_ms: u64) -> Result<(), ApiError> {
    check_data_info_id(&format!("{field}.dataInfoId"), &p.data_info_id)?;
    check_register_id(&format!("{field}.registerId"), &p.register_id)?;
    check_name(&format!("{field}.zone"), &p.zone)?;
    if let Some(client_id) = &p.client_id {
        check_name(&format!("{field}.clientId"), client_id)?;
    }
    check_name(&format!("{field}.source"), &p.source)?;
    if let Some(principal) = &p.principal {
        if &**principal != crate::access::ROOT_OWNER_KEY
            && registry_types::access::PrincipalName::parse(principal).is_err()
        {
            return Err(invalid(format!(
                "{field}.principal must be a principal (token:NAME, serviceaccount:NS/NAME or token)"
            )));
        }
    }
    if p.data.len() > MAX_DATA_ITEMS {
        return Err(invalid(format!(
            "{field}.data has {} items, at most {MAX_DATA_ITEMS} are allowed",
            p.data.len()
        )));
    }
    if let Some(i) = p.data.iter().position(|d| d.len() > MAX_DATA_ITEM_BYTES) {
        return Err(invalid(format!(
            "{field}.data[{i}] must be at most {MAX_DATA_ITEM_BYTES} bytes, got {}",
            p.data[i].len()
        )));
    }
    check_stamp(field, p.version, p.register_timestamp, now_ms)
}

/// The ops of one `apply` from the session node `source`: every op valid and written by
/// that source (a session node writes only its own publishers).
pub fn check_ops(source: &str, ops: &[PublisherOp], now_ms: u64) -> Result<(), ApiError> {
    check_name("source", source)?;
    check_count("ops", ops.len())?;
    for (i, op) in ops.iter().enumerate() {
        let field = format!("ops[{i}]");
        let op_source = match op {
            PublisherOp::Put { publisher } => {
                check_publisher(&format!("{field}.publisher"), publisher, now_ms)?;
                &publisher.source
            }
            PublisherOp::Remove {
                data_info_id,
                register_id,
                version,
                register_timestamp,
                source,
                ..
            } => {
                check_data_info_id(&format!("{field}.dataInfoId"), data_info_id)?;
                check_register_id(&format!("{field}.registerId"), register_id)?;
                check_stamp(&field, *version, *register_timestamp, now_ms)?;
                source
            }
        };
        if **op_source != *source {
            return Err(invalid(format!(
                "{field} is from source {op_source:?}, but the request is from {source:?}"
            )));
        }
    }
    Ok(())
}

/// Full datums from a peer (replication, handover): every publisher and tombstone valid,
/// publishers filed under their own datum, the datum version bounded.
pub fn check_images(images: &[DatumImage], now_ms: u64) -> Result<(), ApiError> {
    check_count("images", images.len())?;
    let max_version = max_datum_version(now_ms);
    for (i, image) in images.iter().enumerate() {
        let field = format!("images[{i}]");
        check_data_info_id(&format!("{field}.dataInfoId"), &image.data_info_id)?;
        if image.version > max_version {
            return Err(invalid(format!(
                "{field}.version {} is ahead of this node's clock (at most {max_version})",
                image.version
            )));
        }
        for (j, p) in image.publishers.iter().enumerate() {
            let pf = format!("{field}.publishers[{j}]");
            check_publisher(&pf, p, now_ms)?;
            if p.data_info_id != image.data_info_id {
                return Err(invalid(format!(
                    "{pf}.dataInfoId differs from the image's dataInfoId"
                )));
            }
        }
        for (j, t) in image.tombstones.iter().enumerate() {
            let tf = format!("{field}.tombstones[{j}]");
            check_register_id(&format!("{tf}.registerId"), &t.register_id)?;
            check_stamp(&tf, t.version, t.register_timestamp, now_ms)?;
        }
    }
    Ok(())
}

/// The dataInfoIds of a read (`fetch`, `images`).
pub fn check_ids(field: &str, ids: &[DataInfoId]) -> Result<(), ApiError> {
    check_count(field, ids.len())?;
    for (i, id) in ids.iter().enumerate() {
        check_data_info_id(&format!("{field}[{i}]"), id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::store::TombstoneImage;
    use std::sync::Arc;

    const NOW: u64 = 1_760_000_000_000;

    fn publisher(version: u64, ts: u64) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: "r1".into(),
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            zone: "DEFAULT_ZONE".into(),
            data: vec!["10.0.0.1:80".to_owned()].into(),
            version,
            register_timestamp: ts,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: "session-0".into(),
            owner: 7,
            principal: None,
        })
    }

    fn put(p: Arc<Publisher>) -> PublisherOp {
        PublisherOp::Put { publisher: p }
    }

    fn message(r: Result<(), ApiError>) -> String {
        match r {
            Err(ApiError::InvalidArgument(m)) => m,
            other => panic!("expected invalid_argument, got {other:?}"),
        }
    }

    #[test]
    fn valid_ops_pass() {
        let ops = vec![
            put(publisher(1, NOW)),
            PublisherOp::Remove {
                data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
                register_id: "r2".into(),
                version: 3,
                register_timestamp: NOW + 1000,
                register_seq: 0,
                source: "session-0".into(),
                owner: u64::MAX,
            },
        ];
        assert_eq!(check_ops("session-0", &ops, NOW), Ok(()));
    }

    #[test]
    fn forged_versions_and_timestamps_are_refused() {
        let m = message(check_ops(
            "session-0",
            &[put(publisher(u64::MAX, NOW))],
            NOW,
        ));
        assert!(m.contains("ops[0].publisher.version"), "{m}");
        let m = message(check_ops("session-0", &[put(publisher(0, NOW))], NOW));
        assert!(m.contains("version"), "{m}");
        let far = NOW + MAX_CLOCK_AHEAD_MS + 1;
        let m = message(check_ops("session-0", &[put(publisher(1, far))], NOW));
        assert!(m.contains("registerTimestamp"), "{m}");
        let m = message(check_ops("session-0", &[put(publisher(1, u64::MAX))], NOW));
        assert!(m.contains("registerTimestamp"), "{m}");
        // A removal naming a far-future write would leave a tombstone no later write beats.
        let remove_at = |register_timestamp| PublisherOp::Remove {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            register_id: "r1".into(),
            version: 1,
            register_timestamp,
            register_seq: 0,
            source: "session-0".into(),
            owner: 1,
        };
        let m = message(check_ops("session-0", &[remove_at(far)], NOW));
        assert!(m.contains("ops[0].registerTimestamp"), "{m}");
        // Exactly at the bound is still a write from a node whose clock runs ahead.
        let edge = NOW + MAX_CLOCK_AHEAD_MS;
        assert_eq!(check_ops("session-0", &[remove_at(edge)], NOW), Ok(()));
        assert_eq!(
            check_ops("session-0", &[put(publisher(1, edge))], NOW),
            Ok(())
        );
    }

    #[test]
    fn names_and_data_are_checked_like_the_public_api() {
        let bad = |f: fn(&mut Publisher)| {
            let mut p = (*publisher(1, NOW)).clone();
            f(&mut p);
            message(check_ops("session-0", &[put(Arc::new(p))], NOW))
        };
        assert!(bad(|p| p.data_info_id = "no-separators".into()).contains("dataInfoId"));
        assert!(bad(|p| p.data_info_id = "#@#i#@#g".into()).contains("dataInfoId.dataId"));
        assert!(bad(|p| p.register_id = "".into()).contains("registerId"));
        assert!(bad(|p| p.register_id = "x".repeat(129).into()).contains("registerId"));
        assert!(bad(|p| p.zone = "a\u{7}b".into()).contains("zone"));
        assert!(bad(|p| p.client_id = Some("".into())).contains("clientId"));
        assert!(bad(|p| p.principal = Some("root".into())).contains("principal"));
        assert!(bad(|p| p.principal = Some("x".repeat(600).into())).contains("principal"));
        assert!(
            bad(|p| p.data = vec!["x".to_owned(); MAX_DATA_ITEMS + 1].into()).contains("data has")
        );
        assert!(
            bad(|p| p.data = vec!["x".repeat(MAX_DATA_ITEM_BYTES + 1)].into()).contains("data[0]")
        );
    }

    #[test]
    fn a_session_node_writes_only_as_itself() {
        let m = message(check_ops("session-1", &[put(publisher(1, NOW))], NOW));
        assert!(m.contains("source"), "{m}");
        assert!(check_ops("", &[], NOW).is_err(), "a source is required");
    }

    #[test]
    fn images_are_bounded_and_consistent() {
        let image = |version: u64, p: Arc<Publisher>| DatumImage {
            data_info_id: "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into(),
            version,
            publishers: vec![p],
            tombstones: vec![TombstoneImage {
                register_id: "gone".into(),
                version: 2,
                register_timestamp: NOW,
                register_seq: 0,
                owner: 7,
            }],
        };
        assert_eq!(
            check_images(&[image(NOW * 1000, publisher(1, NOW))], NOW),
            Ok(())
        );
        let m = message(check_images(&[image(u64::MAX, publisher(1, NOW))], NOW));
        assert!(m.contains("images[0].version"), "{m}");
        let m = message(check_images(&[image(1, publisher(u64::MAX, NOW))], NOW));
        assert!(m.contains("images[0].publishers[0].version"), "{m}");
        let mut other = (*publisher(1, NOW)).clone();
        other.data_info_id = "other#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP".into();
        let m = message(check_images(&[image(1, Arc::new(other))], NOW));
        assert!(m.contains("differs"), "{m}");
        let mut tomb = image(1, publisher(1, NOW));
        tomb.tombstones[0].version = u64::MAX;
        assert!(message(check_images(&[tomb], NOW)).contains("tombstones[0]"));
    }

    #[test]
    fn ids_are_checked_and_counted() {
        let ok: Vec<DataInfoId> = vec!["a#@#b#@#c".into()];
        assert_eq!(check_ids("ids", &ok), Ok(()));
        assert!(message(check_ids("ids", &["bad".into()])).contains("ids[0]"));
        let many: Vec<DataInfoId> = vec!["a#@#b#@#c".into(); MAX_ENTRIES_PER_REQUEST + 1];
        assert!(message(check_ids("ids", &many)).contains("at most"));
    }
}
