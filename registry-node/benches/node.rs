//! Benchmark of a standalone registry-node process over real HTTP on loopback: publish
//! throughput with 64 concurrent clients, publish-to-push latency with 1,000 subscribers on
//! one service, and resident memory per publisher at 100,000 publishers.
//!
//! `cargo bench -p registry-node --bench node` (options: `-- --quick` for a short run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use testkit::{poll_until, Process, Spawn};

/// The node under test, started by the workspace's test kit (its log is kept in a
/// temporary file and printed if the bench panics).
struct Node {
    process: Process,
    base: String,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        let process = Spawn::registry_node("registry-node")
            .env("RUST_LOG", "warn")
            .args(["--http-addr", "127.0.0.1:0"])
            .args(extra)
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!(
            "http://{}",
            process.listening_addr("http").expect("an http address")
        );
        Node { process, base }
    }

    fn pid(&self) -> String {
        self.process.pid().expect("the node runs").to_string()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

async fn session(http: &reqwest::Client, base: &str) -> String {
    let v: Value = http
        .post(format!("{base}/api/v1/sessions"))
        .json(&json!({"ttlSeconds": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sessionId"].as_str().unwrap().to_owned()
}

async fn publish(http: &reqwest::Client, base: &str, session: &str, body: &Value) -> bool {
    match http
        .post(format!("{base}/api/v1/sessions/{session}/publishers"))
        .json(body)
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn throughput(quick: bool) {
    let node = Node::start(&[]);
    let clients = 64;
    let duration = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let http = client();
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(session(&http, &node.base).await);
    }
    // Warm-up: every client's publishers exist, connections are open.
    let start = Instant::now() + Duration::from_millis(500);
    let server_pid = node.pid();
    let cpu_probe = {
        let server_pid = server_pid.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let a = (cpu_time(&server_pid), cpu_time("self"));
            tokio::time::sleep_until((start + duration).into()).await;
            let b = (cpu_time(&server_pid), cpu_time("self"));
            (b.0 - a.0, b.1 - a.1)
        })
    };
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(c, s)| {
            let http = http.clone();
            let base = node.base.clone();
            let done = done.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut i: u64 = 0;
                let mut counted = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= start + duration {
                        break;
                    }
                    let body = json!({
                        "dataId": format!("bench.tp.{}", c % 16),
                        "registerId": format!("c{c}-r{}", i % 32),
                        "data": [format!("10.{}.{}.{}:8080", c, (i / 256) % 256, i % 256)],
                    });
                    let ok = publish(&http, &base, &s, &body).await;
                    if now >= start {
                        counted += 1;
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                done.fetch_add(counted, Ordering::Relaxed);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (server_cpu, client_cpu) = cpu_probe.await.unwrap();
    let n = done.load(Ordering::Relaxed);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "publish throughput: {clients} concurrent clients, {:.1} s: {n} publishes ({} failed) = {:.0} publishes/s",
        duration.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        n as f64 / duration.as_secs_f64()
    );
    println!(
        "  CPU per publish: server {:.1} us, bench client {:.1} us (server alone on 2 cores: {:.0} publishes/s)",
        per(server_cpu),
        per(client_cpu),
        2e6 / per(server_cpu).max(0.001),
    );
}

async fn push_latency(quick: bool) {
    let node = Node::start(&[]);
    let http = client();
    let sessions = 50;
    let per_session = 20;
    let rounds = if quick { 10 } else { 40 };
    let sent: Arc<parking_lot::Mutex<Vec<Option<Instant>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; rounds]));
    let samples: Arc<parking_lot::Mutex<Vec<Duration>>> =
        Arc::new(parking_lot::Mutex::new(Vec::new()));
    let initial = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..sessions {
        let s = session(&http, &node.base).await;
        let res = http
            .get(format!("{}/api/v1/sessions/{s}/events", node.base))
            .send()
            .await
            .unwrap();
        for _ in 0..per_session {
            http.post(format!("{}/api/v1/sessions/{s}/subscribers", node.base))
                .json(&json!({"dataId": "bench.push"}))
                .send()
                .await
                .unwrap();
        }
        let sent = sent.clone();
        let samples = samples.clone();
        let initial = initial.clone();
        readers.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(testkit::sse::stream(res));
            while let Some(ev) = events.next().await {
                let at = Instant::now();
                let Some(marker) = ev.data["zones"]["DEFAULT_ZONE"][0].as_str() else {
                    initial.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let round: usize = marker.trim_start_matches("round-").parse().unwrap();
                if let Some(t) = sent.lock()[round] {
                    samples.lock().push(at.duration_since(t));
                }
            }
        }));
    }
    // Measured as far as it got: a subscriber short of its first push shows in the count.
    let _ = poll_until(
        "every subscriber's first push",
        Duration::from_secs(30),
        || async { initial.load(Ordering::Relaxed) >= (sessions * per_session) as u64 },
    )
    .await;
    let publisher = session(&http, &node.base).await;
    for r in 0..rounds {
        sent.lock()[r] = Some(Instant::now());
        let body =
            json!({"dataId": "bench.push", "registerId": "p", "data": [format!("round-{r}")]});
        assert!(publish(&http, &node.base, &publisher, &body).await);
        // Longer than the push delay, so every round is its own push.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let want = sessions * per_session * rounds;
    let _ = poll_until("every push", Duration::from_secs(10), || async {
        samples.lock().len() >= want
    })
    .await;
    for r in readers {
        r.abort();
    }
    let mut s = samples.lock().clone();
    s.sort();
    println!(
        "publish-to-push latency: {} subscribers on one service ({sessions} sessions), push delay 200 ms, {rounds} publishes: {}/{want} pushes received, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sessions * per_session,
        s.len(),
        percentile(&s, 0.5).as_secs_f64() * 1e3,
        percentile(&s, 0.99).as_secs_f64() * 1e3,
        s.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn memory(quick: bool) {
    let node = Node::start(&[]);
    let http = client();
    let publishers: usize = if quick { 20_000 } else { 100_000 };
    let sessions = 100;
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(session(&http, &node.base).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.rss_kib();
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let http = http.clone();
            let base = node.base.clone();
            tokio::spawn(async move {
                for i in 0..publishers / sessions {
                    let n = k * (publishers / sessions) + i;
                    let body = json!({
                        "dataId": format!("com.example.service{}", n % 1000),
                        "data": [format!("10.{}.{}.{}:8080", n / 65536, (n / 256) % 256, n % 256)],
                    });
                    assert!(publish(&http, &base, &s, &body).await);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node.rss_kib();
    println!(
        "memory: {publishers} publishers (1,000 services, {sessions} sessions, one ~14-byte address each): RSS {:.1} MiB -> {:.1} MiB = {:.0} bytes per publisher",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / publishers as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .skip(1)
        .find(|a| ["throughput", "latency", "memory"].contains(&a.as_str()))
        .cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if only.as_deref().is_none_or(|o| o == "throughput") {
            throughput(quick).await;
        }
        if only.as_deref().is_none_or(|o| o == "latency") {
            push_latency(quick).await;
        }
        if only.as_deref().is_none_or(|o| o == "memory") {
            memory(quick).await;
        }
    });
}
