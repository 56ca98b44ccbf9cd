//! Delta pushes, opt-in (`"delta": true` on a subscriber; README "Delta pushes"): after a
//! first full push on each open stream, a delta subscriber that holds the version a change
//! applies to gets `event: delta` (items added and removed per zone) instead of the whole
//! list; on any gap it gets the full `event: push`; every other subscriber sees exactly
//! API.md's events.
//!
//! Black-box against the binary (bytes on the wire, applied state, stream reopen, default
//! subscribers), and in process for a reader too slow to take a push (the outbox refuses
//! it, a gap the client cannot see).

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use registry_node::dataplane::{LocalDataPlane, LocalDataPlaneConfig};
use registry_node::metrics::Metrics;
use registry_node::model::ServiceKey;
use registry_node::session::{
    PublishRequest, Scope, SessionConfig, SessionLayer, SubscribeRequest,
};
use serde_json::{json, Value};
use testkit::http::Client;
use testkit::node::Node;
use testkit::sse::{WireEvent, WireEvents};
use testkit::{eventually, DEADLINE};
use tokio_util::sync::CancellationToken;

/// A session's event stream read raw in the background (decoded when gzip), `: ping`
/// comments skipped.
struct WireStream(WireEvents);

impl WireStream {
    async fn open(base: &str, sid: &str, gzip: bool) -> WireStream {
        let mut req = reqwest::Client::new().get(format!("{base}/api/v1/sessions/{sid}/events"));
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let encoding = res.headers().get("content-encoding").cloned();
        assert_eq!(encoding.is_some(), gzip, "{encoding:?}");
        WireStream(WireEvents::reading(res.bytes_stream(), gzip))
    }

    async fn next(&mut self) -> WireEvent {
        tokio::time::timeout(DEADLINE, self.0.recv())
            .await
            .expect("an event within the deadline")
            .expect("the stream is open")
    }

    /// The next event for subscriber `rid`, skipping others.
    async fn next_for(&mut self, rid: &str) -> WireEvent {
        loop {
            let e = self.next().await;
            if e.data["registerId"] == rid {
                return e;
            }
        }
    }
}

type Zones = BTreeMap<String, Vec<String>>;

fn zones_of(v: &Value) -> Zones {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// Every zone's items sorted: a zone is a multiset, its order is not compared.
fn sorted(mut z: Zones) -> Zones {
    z.values_mut().for_each(|items| items.sort());
    z
}

/// A subscriber's state as a client holds it: the last full push, deltas applied to it.
#[derive(Debug, Default, Clone)]
struct Held {
    version: Option<u64>,
    zones: Zones,
    fulls: usize,
    deltas: usize,
}

impl Held {
    /// Takes one event; a delta must apply to exactly the version held (its baseVersion)
    /// and remove only items that are there.
    fn take(&mut self, e: &WireEvent) {
        let version = e.data["version"].as_u64().expect("a version");
        if self.version.is_none() {
            assert_eq!(e.event, "push", "the first push is full: {e:?}");
        }
        if let Some(last) = self.version {
            assert!(
                version > last || e.event == "push",
                "versions increase: {e:?}"
            );
        }
        match e.event.as_str() {
            "push" => {
                self.zones = zones_of(&e.data["zones"]);
                self.fulls += 1;
            }
            "delta" => {
                assert_eq!(
                    e.data["baseVersion"].as_u64(),
                    self.version,
                    "a delta applies to the version held: {e:?}"
                );
                assert!(e.data.get("zones").is_none(), "{e:?}");
                for (zone, removed) in zones_of(&e.data["removed"]) {
                    let items = self.zones.get_mut(&zone).expect("a zone to remove from");
                    for r in removed {
                        let at = items
                            .iter()
                            .position(|i| *i == r)
                            .expect("an item to remove");
                        items.remove(at);
                    }
                }
                for (zone, added) in zones_of(&e.data["added"]) {
                    self.zones.entry(zone).or_default().extend(added);
                }
                self.zones.retain(|_, items| !items.is_empty());
                self.deltas += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
        self.version = Some(version);
    }
}

async fn batch_publish(api: &Client, sid: &str, publishers: Vec<Value>) {
    let (st, v) = api
        .post(
            &format!("/api/v1/sessions/{sid}/publishers:batch"),
            json!({ "publishers": publishers }),
        )
        .await;
    assert!(st.is_success(), "{v}");
}

async fn query(api: &Client, data_id: &str) -> (u64, Zones) {
    let (st, v) = api.get(&format!("/api/v1/data?dataId={data_id}")).await;
    assert!(st.is_success(), "{v}");
    (v["version"].as_u64().unwrap(), zones_of(&v["zones"]))
}

fn address(i: usize, round: usize) -> String {
    format!("10.{}.{}.{}:8080", round, i / 250, i % 250)
}

#[tokio::test]
async fn a_one_instance_change_to_5000_instances_costs_under_1_kib_for_a_delta_subscriber() {
    let node = Node::start(&[]);
    let api = Client::new(&node.addr);
    let base = format!("http://{}", node.addr);
    let publisher = api.session(120).await;
    for batch in 0..5 {
        let entries = (batch * 1000..(batch + 1) * 1000)
            .map(|i| json!({"dataId": "big.svc", "registerId": format!("p{i:04}"), "data": [address(i, 0)]}))
            .collect();
        batch_publish(&api, &publisher, entries).await;
    }
    // A delta subscriber, a full one, and a full one on a gzip stream.
    let mut streams = Vec::new();
    for (rid, delta, gzip) in [
        ("delta", true, false),
        ("full", false, false),
        ("gzip", false, true),
    ] {
        let sid = api.session(120).await;
        api.subscribe(
            &sid,
            json!({"dataId": "big.svc", "registerId": rid, "delta": delta}),
        )
        .await;
        let mut events = WireStream::open(&base, &sid, gzip).await;
        let first = loop {
            let e = events.next_for(rid).await;
            if zones_of(&e.data["zones"])
                .values()
                .map(Vec::len)
                .sum::<usize>()
                == 5000
            {
                break e;
            }
        };
        assert_eq!(first.event, "push", "the first push is full: {first:?}");
        streams.push((rid, events, Held::default()));
        streams.last_mut().unwrap().2.take(&first);
    }

    let mut costs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for round in 1..=3 {
        let i = 1000 * round + 7;
        let (st, v) = api
            .publish(
                &publisher,
                json!({"dataId": "big.svc", "registerId": format!("p{i:04}"), "data": [address(i, round)]}),
            )
            .await;
        assert!(st.is_success(), "{v}");
        let (version, expected) = query(&api, "big.svc").await;
        for (rid, events, held) in &mut streams {
            while held.version < Some(version) {
                let e = events.next_for(rid).await;
                held.take(&e);
                costs.entry(rid).or_default().push(e.wire);
                if *rid == "delta" {
                    assert_eq!(e.event, "delta", "{e:?}");
                    assert_eq!(
                        e.data["added"],
                        json!({"DEFAULT_ZONE": [address(i, round)]})
                    );
                    assert_eq!(e.data["removed"], json!({"DEFAULT_ZONE": [address(i, 0)]}));
                    assert!(e.bytes <= 1024, "a delta of {} bytes", e.bytes);
                    assert!(e.wire <= 1024, "{} bytes on the wire", e.wire);
                } else {
                    assert_eq!(e.event, "push", "{e:?}");
                }
            }
            assert_eq!(
                sorted(held.zones.clone()),
                sorted(expected.clone()),
                "{rid}"
            );
        }
    }
    eprintln!("bytes on the wire per one-instance change of 5,000 instances: {costs:?}");
    assert!(costs["full"].iter().all(|&b| b > 50_000), "{costs:?}");
}

#[tokio::test]
async fn a_delta_subscribers_applied_state_equals_a_full_subscribers_through_random_changes() {
    let node = Node::start(&[]);
    let api = Client::new(&node.addr);
    let base = format!("http://{}", node.addr);
    let publisher = api.session(120).await;
    let sid = api.session(120).await;
    // Subscribers in every scope, with and without deltas, on one stream.
    let subs = [
        ("d", true, "dataCenter"),
        ("f", false, "dataCenter"),
        ("dz", true, "zone"),
        ("fz", false, "zone"),
    ];
    for (rid, delta, scope) in subs {
        api.subscribe(
            &sid,
            json!({"dataId": "rand.svc", "registerId": rid, "delta": delta, "scope": scope, "zone": "z1"}),
        )
        .await;
    }
    let pool = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    let zones = ["z1", "z2", "z3"];
    let publish = |p: usize, data: &[&str]| json!({"dataId": "rand.svc", "registerId": format!("p{p}"), "zone": zones[p % 3], "data": data});
    let mut rng = rand::rngs::StdRng::seed_from_u64(2017);
    let random_data = |rng: &mut rand::rngs::StdRng| -> Vec<&str> {
        (0..rng.random_range(1..4))
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect()
    };
    // Every publisher live at first, the same items repeated across them.
    let mut live: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut entries = Vec::new();
    for p in 0..8 {
        let data = random_data(&mut rng);
        entries.push(publish(p, &data));
        live.insert(p, data);
    }
    batch_publish(&api, &publisher, entries).await;
    let mut events = WireStream::open(&base, &sid, false).await;
    let mut held: BTreeMap<&str, Held> = subs.iter().map(|s| (s.0, Held::default())).collect();
    for step in 0..40 {
        let p = rng.random_range(0..8usize);
        match rng.random_range(0..10) {
            // Delete a publisher.
            0..=2 if live.contains_key(&p) => {
                let (st, v) = api
                    .delete(&format!("/api/v1/sessions/{publisher}/publishers/p{p}"))
                    .await;
                assert!(st.is_success(), "{v}");
                live.remove(&p);
            }
            // Several publishers at once, across zones.
            3 | 4 => {
                let q = (p + 1 + rng.random_range(0..7usize)) % 8;
                let entries: Vec<Value> = [p, q]
                    .iter()
                    .map(|&i| {
                        let data = random_data(&mut rng);
                        live.insert(i, data.clone());
                        publish(i, &data)
                    })
                    .collect();
                batch_publish(&api, &publisher, entries).await;
            }
            // Add or replace one.
            _ => {
                let data = random_data(&mut rng);
                let (st, v) = api.publish(&publisher, publish(p, &data)).await;
                assert!(st.is_success(), "{v}");
                live.insert(p, data);
            }
        }
        let (version, expected) = query(&api, "rand.svc").await;
        while held.values().any(|h| h.version < Some(version)) {
            let e = events.next().await;
            let rid = e.data["registerId"].as_str().unwrap().to_owned();
            held.get_mut(rid.as_str())
                .expect("a subscriber of ours")
                .take(&e);
            if rid.starts_with('f') {
                assert_eq!(e.event, "push", "a default subscriber gets full pushes");
            }
        }
        let z1: Zones = expected
            .iter()
            .filter(|(z, _)| *z == "z1")
            .map(|(z, v)| (z.clone(), v.clone()))
            .collect();
        assert_eq!(
            sorted(held["f"].zones.clone()),
            sorted(expected.clone()),
            "step {step}"
        );
        assert_eq!(
            sorted(held["d"].zones.clone()),
            sorted(expected),
            "step {step}"
        );
        assert_eq!(
            sorted(held["fz"].zones.clone()),
            sorted(z1.clone()),
            "step {step}"
        );
        assert_eq!(sorted(held["dz"].zones.clone()), sorted(z1), "step {step}");
    }
    for (rid, h) in &held {
        eprintln!("{rid}: {} full pushes, {} deltas", h.fulls, h.deltas);
    }
    // A delta not smaller than the full push goes out as the full push.
    assert!(held["d"].deltas >= 30, "{:?}", held["d"]);
    assert!(held["dz"].deltas >= 20, "{:?}", held["dz"]);
}

#[tokio::test]
async fn a_reopened_stream_starts_with_a_full_push_then_deltas_again() {
    let node = Node::start(&[]);
    let api = Client::new(&node.addr);
    let base = format!("http://{}", node.addr);
    let publisher = api.session(120).await;
    let publish = |i: usize, round: usize| json!({"dataId": "reopen.svc", "registerId": format!("p{i}"), "data": [address(i, round)]});
    batch_publish(&api, &publisher, (0..20).map(|i| publish(i, 0)).collect()).await;
    let sid = api.session(120).await;
    api.subscribe(
        &sid,
        json!({"dataId": "reopen.svc", "registerId": "d", "delta": true}),
    )
    .await;
    let mut held = Held::default();
    for reopen in 0..2 {
        let mut events = WireStream::open(&base, &sid, false).await;
        let first = events.next_for("d").await;
        assert_eq!(
            first.event, "push",
            "a stream (re)open brings a full push: {first:?}"
        );
        held.take(&first);
        let (version, expected) = query(&api, "reopen.svc").await;
        assert_eq!(held.version, Some(version));
        assert_eq!(sorted(held.zones.clone()), sorted(expected));
        for round in 1..=2 {
            let (st, v) = api
                .publish(&publisher, publish(round, 10 * reopen + round))
                .await;
            assert!(st.is_success(), "{v}");
            let e = events.next_for("d").await;
            assert_eq!(e.event, "delta", "{e:?}");
            held.take(&e);
            let (version, expected) = query(&api, "reopen.svc").await;
            assert_eq!(held.version, Some(version));
            assert_eq!(sorted(held.zones.clone()), sorted(expected));
        }
        // Closing the stream is the gap: the session lives on, the next stream starts full.
        drop(events);
    }
    assert_eq!((held.fulls, held.deltas), (2, 4));
}

#[tokio::test]
async fn default_subscribers_get_exactly_todays_events() {
    let node = Node::start(&[]);
    let api = Client::new(&node.addr);
    let base = format!("http://{}", node.addr);
    let publisher = api.session(120).await;
    let sid = api.session(120).await;
    // Today's body, the same saying `"delta": false`, and a field no one knows.
    api.subscribe(&sid, json!({"dataId": "plain.svc", "registerId": "a"}))
        .await;
    api.subscribe(
        &sid,
        json!({"dataId": "plain.svc", "registerId": "b", "delta": false}),
    )
    .await;
    api.subscribe(
        &sid,
        json!({"dataId": "plain.svc", "registerId": "c", "deltaPushes": true}),
    )
    .await;
    // A delta that is not a boolean is refused, naming the field, and changes nothing.
    for bad in [json!("yes"), json!(1), json!({})] {
        let (st, v) = api
            .post(
                &format!("/api/v1/sessions/{sid}/subscribers"),
                json!({"dataId": "plain.svc", "registerId": "x", "delta": bad}),
            )
            .await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_argument");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("delta"),
            "{v}"
        );
    }
    let mut events = WireStream::open(&base, &sid, false).await;
    let mut seen: BTreeMap<String, Vec<WireEvent>> = BTreeMap::new();
    for round in 0..6 {
        let data: Vec<String> = (0..50).map(|i| address(i + round, 0)).collect();
        let (st, v) = api
            .publish(
                &publisher,
                json!({"dataId": "plain.svc", "registerId": "p", "data": data}),
            )
            .await;
        assert!(st.is_success(), "{v}");
        let (version, expected) = query(&api, "plain.svc").await;
        while ["a", "b", "c"].iter().any(|r| {
            seen.get(*r)
                .and_then(|v| v.last())
                .and_then(|e| e.data["version"].as_u64())
                < Some(version)
        }) {
            let e = events.next().await;
            seen.entry(e.data["registerId"].as_str().unwrap().to_owned())
                .or_default()
                .push(e);
        }
        for rid in ["a", "b", "c"] {
            let last = seen[rid].last().unwrap();
            assert_eq!(last.event, "push");
            assert_eq!(
                zones_of(&last.data["zones"]),
                expected,
                "a full snapshot, in push order"
            );
        }
    }
    // Event for event the same bytes, apart from the registerId; and API.md's fields only.
    let strip = |e: &WireEvent| {
        let mut v = e.data.clone();
        v.as_object_mut().unwrap().remove("registerId");
        (e.event.clone(), v, e.bytes)
    };
    let a: Vec<_> = seen["a"].iter().map(strip).collect();
    assert_eq!(a, seen["b"].iter().map(strip).collect::<Vec<_>>());
    assert_eq!(a, seen["c"].iter().map(strip).collect::<Vec<_>>());
    for e in &seen["a"] {
        let mut keys: Vec<&str> = e
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "dataId",
                "dataInfoId",
                "group",
                "instanceId",
                "registerId",
                "version",
                "zones"
            ]
        );
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("registry_delta_pushes_sent_total 0"),
        "{metrics}"
    );
}

fn key(data_id: &str) -> ServiceKey {
    ServiceKey {
        data_id: data_id.into(),
        group: "DEFAULT_GROUP".into(),
        instance_id: "DEFAULT_INSTANCE_ID".into(),
    }
}

#[tokio::test]
async fn a_push_refused_for_a_slow_reader_is_a_gap_and_the_next_push_is_full() {
    let mut cfg = registry_node::config::Config::for_tests();
    cfg.push_delay_ms = 10;
    cfg.push_max_delay_ms = 50;
    // One queued push fills the stream's outbox while its reader takes nothing.
    cfg.stream_buffer = 1;
    let metrics = Arc::new(Metrics::new());
    let layer = SessionLayer::new(
        SessionConfig::from_config(&cfg, "n1"),
        LocalDataPlane::new(LocalDataPlaneConfig::default()),
        metrics.clone(),
        CancellationToken::new(),
    );
    layer.start();
    let s = layer.create_session(None, 300).unwrap();
    let publish = |round: usize| PublishRequest {
        key: key("slow.svc"),
        zone: "DEFAULT_ZONE".into(),
        register_id: Some("p".into()),
        data: (0..20).map(|i| address(i, round)).collect(),
    };
    layer.publish(&s.id, publish(0)).await.unwrap();
    // The stream is not read yet: what the layer queues stays in its outbox.
    let body = layer.open_stream(&s.id).await.unwrap();
    layer
        .subscribe(
            &s.id,
            SubscribeRequest {
                key: key("slow.svc"),
                zone: "DEFAULT_ZONE".into(),
                scope: Scope::DataCenter,
                register_id: Some("d".into()),
                delta: true,
            },
        )
        .await
        .unwrap();
    eventually("the first push queued", DEADLINE, || async {
        metrics.pushes_sent.get() >= 1
    })
    .await;
    // Two changes while the outbox is full: both refused, the node's base moves past
    // the version this subscriber holds.
    for round in 1..=2 {
        let failed = metrics.pushes_failed.get();
        layer.publish(&s.id, publish(round)).await.unwrap();
        eventually("the push refused", DEADLINE, || async {
            metrics.pushes_failed.get() > failed
        })
        .await;
    }
    let mut events = WireStream(WireEvents::reading(body, false));
    let first = events.next_for("d").await;
    assert_eq!(first.event, "push");
    assert_eq!(
        sorted(zones_of(&first.data["zones"]))["DEFAULT_ZONE"][0],
        address(0, 0)
    );
    let mut held = Held::default();
    held.take(&first);
    let after_gap = events.next_for("d").await;
    assert_eq!(
        after_gap.event, "push",
        "a gap brings a full push: {after_gap:?}"
    );
    held.take(&after_gap);
    assert!(held.zones["DEFAULT_ZONE"].contains(&address(0, 2)));
    // From the full push on, deltas again.
    let mut one = publish(3);
    one.register_id = Some("q".into());
    one.data = vec!["10.9.9.9:80".into()];
    layer.publish(&s.id, one).await.unwrap();
    let e = events.next_for("d").await;
    assert_eq!(e.event, "delta", "{e:?}");
    assert_eq!(e.data["added"], json!({"DEFAULT_ZONE": ["10.9.9.9:80"]}));
    assert_eq!(e.data["removed"], json!({}));
    held.take(&e);
    let mut want: Vec<String> = (0..20).map(|i| address(i, 2)).collect();
    want.push("10.9.9.9:80".into());
    want.sort();
    assert_eq!(sorted(held.zones)["DEFAULT_ZONE"], want);
}
