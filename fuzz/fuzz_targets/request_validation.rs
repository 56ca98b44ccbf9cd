//! The public API's request parsing (registry-node/src/http/validate.rs): any body or query
//! string is either refused with an `invalid_argument` naming a field, or parsed into a
//! request that itself passes the API.md rules. Nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_node::http::error::ApiError;
use registry_node::http::validate;

fn refused_properly(e: &ApiError) {
    assert_eq!(e.code(), "invalid_argument", "{e:?}");
    assert!(!e.to_string().is_empty());
}

fn check<T>(result: Result<T, ApiError>, accepted: impl FnOnce(T)) {
    match result {
        Ok(v) => accepted(v),
        Err(e) => refused_properly(&e),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    match selector % 6 {
        0 => check(validate::publish(body), |p| {
            assert!(p.data.len() <= 1_000);
            assert!(p.data.iter().all(|d| d.len() <= 16 * 1024));
            validate::check_name("zone", &p.zone).expect("an accepted zone is valid");
        }),
        1 => check(validate::publish_batch(body), |batch| {
            assert!(batch.len() <= 1_000);
        }),
        2 => check(validate::subscribe(body), |_| {}),
        3 => check(validate::create_session(body), |_| {}),
        4 => {
            if let Ok(raw) = std::str::from_utf8(body) {
                check(validate::parse_query(raw), |query| {
                    for (k, v) in &query {
                        assert!(!k.contains('\u{FFFD}') || raw.contains('\u{FFFD}'), "{k:?}");
                        let _ = validate::parse_u64(k, v);
                        let _ = validate::parse_wait(v);
                    }
                });
            }
        }
        _ => {
            if let Ok(raw) = std::str::from_utf8(body) {
                let _ = validate::check_name("dataId", raw).map_err(|e| refused_properly(&e));
                let _ = validate::check_register_id("registerId", raw)
                    .map_err(|e| refused_properly(&e));
                if let Ok(wait) = validate::parse_wait(raw) {
                    assert!(wait <= std::time::Duration::from_secs(300), "{wait:?}");
                }
            }
        }
    }
});
