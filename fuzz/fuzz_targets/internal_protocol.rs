//! Decoding of the internal protocol (registry-node/src/dataplane/wire.rs) and the data
//! nodes' checks of what they decode (registry-node/src/data/validate.rs): any body is
//! either refused, or decoded into ops and images that pass the checks only within the
//! bounds they promise. Nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_node::data::validate;
use registry_node::dataplane::wire;

/// A fixed "now" so that timestamp bounds are deterministic.
const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<wire::ApplyRequest>(body) {
                if validate::check_ops(&req.source, &req.ops, NOW_MS).is_ok() {
                    // An accepted apply writes only its own source's publishers.
                    for op in &req.ops {
                        if let registry_node::model::PublisherOp::Put { publisher } = op {
                            assert_eq!(publisher.source, req.source);
                        }
                    }
                }
                if let Some(doc) = req.membership {
                    let _ = doc.validate();
                }
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<wire::InstallRequest>(body) {
                if validate::check_images(&req.images, NOW_MS).is_ok() {
                    for image in &req.images {
                        assert!(image.version <= validate::max_datum_version(NOW_MS));
                    }
                }
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<wire::FetchRequest>(body) {
                let _ = validate::check_ids("ids", &req.ids);
            }
        }
        3 => {
            if let Ok(req) = serde_json::from_slice::<wire::DigestRequest>(body) {
                let _ = serde_json::to_vec(&req).expect("a decoded request encodes again");
            }
        }
        4 => {
            if let Ok(req) = serde_json::from_slice::<wire::ReconcileRequest>(body) {
                let _ = serde_json::to_vec(&req).expect("a decoded request encodes again");
            }
            if let Ok(req) = serde_json::from_slice::<wire::ChangesRequest>(body) {
                let _ = serde_json::to_vec(&req).expect("a decoded request encodes again");
            }
        }
        _ => {
            if let Ok(id) = std::str::from_utf8(body) {
                let _ = validate::check_data_info_id("dataInfoId", id);
            }
            if let Ok(req) = serde_json::from_slice::<wire::ImagesRequest>(body) {
                let _ = validate::check_ids("ids", &req.ids);
            }
        }
    }
});
