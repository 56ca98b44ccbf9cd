//! The publisher merge rules (registry-node/src/data/merge.rs) under any sequence of puts
//! and removals of a few registerIds, checking what the module promises:
//! - every replica converges: the same operations in another order give the same live set;
//! - idempotence: applying them all again changes nothing and reports no change;
//! - an operation reports a change exactly when the live set's content changed, and the
//!   live count matches the live slots.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use registry_node::data::merge::PublisherSet;
use registry_node::model::{Publisher, WriteOrder};

#[derive(Debug, Clone, Arbitrary)]
enum Op {
    Put {
        rid: u8,
        timestamp: u8,
        owner: u8,
        version: u8,
        data: u8,
        source: u8,
    },
    Remove {
        rid: u8,
        timestamp: u8,
        owner: u8,
        version: u8,
        at: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    ops: Vec<Op>,
    /// Picks the second order the operations are applied in.
    shuffle: Vec<u16>,
}

fn rid(r: u8) -> Arc<str> {
    Arc::from(format!("r{}", r % 4))
}

fn publisher(rid_: u8, timestamp: u8, owner: u8, version: u8, data: u8, source: u8) -> Publisher {
    Publisher {
        register_id: rid(rid_),
        data_info_id: Arc::from("svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"),
        zone: Arc::from("z"),
        data: vec![format!("d{}", data % 3)].into(),
        version: u64::from(version % 4),
        register_timestamp: u64::from(timestamp % 4),
        register_seq: 0,
        client_id: None,
        session_id: Arc::from(""),
        source: Arc::from(format!("s{}", source % 2)),
        owner: u64::from(owner % 3),
        principal: None,
    }
}

/// What subscribers see: registerId → content.
type Live = BTreeMap<String, (Vec<String>, String, String, u64)>;

fn live(set: &PublisherSet) -> Live {
    set.live()
        .map(|p| {
            (
                p.register_id.to_string(),
                (
                    p.data.to_vec(),
                    p.zone.to_string(),
                    p.source.to_string(),
                    p.owner,
                ),
            )
        })
        .collect()
}

fn apply(set: &mut PublisherSet, op: &Op) -> bool {
    match *op {
        Op::Put {
            rid,
            timestamp,
            owner,
            version,
            data,
            source,
        } => set.put(Arc::new(publisher(
            rid, timestamp, owner, version, data, source,
        ))),
        Op::Remove {
            rid: r,
            timestamp,
            owner,
            version,
            at,
        } => set.remove(
            &rid(r),
            WriteOrder {
                register_timestamp: u64::from(timestamp % 4),
                register_seq: 0,
                owner: u64::from(owner % 3),
                version: u64::from(version % 4),
            },
            u64::from(at),
        ),
    }
}

/// Applies `ops` in order, checking each reported change against the live set.
fn run(set: &mut PublisherSet, ops: &[Op]) {
    for op in ops {
        let before = live(set);
        let changed = apply(set, op);
        let after = live(set);
        assert_eq!(changed, before != after, "{op:?}: {before:?} -> {after:?}");
        assert_eq!(set.live_count(), after.len());
    }
}

fuzz_target!(|input: Input| {
    let ops: Vec<Op> = input.ops.into_iter().take(64).collect();
    let mut first = PublisherSet::new();
    run(&mut first, &ops);

    let mut permuted = ops.clone();
    for (i, s) in input.shuffle.iter().enumerate().take(permuted.len()) {
        let j = usize::from(*s) % permuted.len();
        let n = permuted.len();
        permuted.swap(i % n, j);
    }
    let mut second = PublisherSet::new();
    run(&mut second, &permuted);
    assert_eq!(
        live(&first),
        live(&second),
        "order changed the outcome: {ops:?} vs {permuted:?}"
    );

    let converged = live(&first);
    for op in &ops {
        assert!(!apply(&mut first, op), "a repeated {op:?} changed the set");
    }
    assert_eq!(live(&first), converged);
});
