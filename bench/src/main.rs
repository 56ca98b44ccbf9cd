//! Benchmark: this registry (standalone and as a local cluster) side by side with etcd and ZooKeeper.

mod backend;
mod etcd;
mod failover;
mod mass;
mod registry;
mod report;
mod servers;
mod stats;
mod workloads;
mod zk;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use backend::{check_tools, BackendKind, Server, ServerConfig};
use failover::FailoverParams;
use mass::{BytesParams, MassChurnParams, MassSubscribeParams};
use report::Record;
use workloads::{ChurnParams, FanoutParams, RegisterParams, ScaleParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Register,
    /// The register workload with each client sending its registrations in batches
    /// (registry `publishers:batch`, etcd txn, ZooKeeper multi).
    RegisterBatch,
    Fanout,
    Churn,
    Scale,
    /// registry-cluster only: SIGKILL a data node under load, time until whole again
    Failover,
    /// Many subscribers on ONE service (registry: sessions of several subscribers; etcd:
    /// watchers multiplexed on watch streams); one change must reach all of them. Reports
    /// change → seen, misses, server RSS before and after the subscribers.
    MassSubscribe,
    /// Registry only: many publishers across sessions, a share of the sessions end and come
    /// back; change → push latency and the most pushes a subscriber got per push delay.
    MassChurn,
    /// Registry only: a one-instance change to a large service, bytes on the wire per
    /// subscriber for a full push, a gzip stream and a delta push.
    BytesPerChange,
}

/// Compares this registry with etcd and ZooKeeper on identical workloads. Every server is
/// started and stopped by the tool on loopback; install etcd and ZooKeeper with bench/setup.sh.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Short run: small counts everywhere (for a smoke test, not for figures).
    #[arg(long)]
    quick: bool,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "registry,registry-cluster,etcd,zookeeper"
    )]
    backends: Vec<BackendKind>,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "register,register-batch,fanout,churn,scale,failover,mass-subscribe,mass-churn,bytes-per-change"
    )]
    workloads: Vec<Workload>,
    /// registry-node binary (default: this workspace's, in the bench's profile, built when
    /// missing or stale).
    #[arg(long, env = "REGISTRY_NODE_BIN")]
    registry_bin: Option<PathBuf>,
    /// Push debounce given to the registry nodes.
    #[arg(long, default_value_t = 200)]
    push_delay_ms: u64,
    /// Push debounce of the registry nodes of the fan-out workloads only, fanout and
    /// mass-subscribe (default: --push-delay-ms), so that one run measures delay-0 fan-out
    /// and the merge window of mass-churn side by side.
    #[arg(long)]
    fanout_push_delay_ms: Option<u64>,
    /// fanout: subscriber counts, comma-separated; each gets a fresh server and its own row
    /// group `fanout-<count>` (a single count keeps the name `fanout`). Default: --subscribers.
    #[arg(long, value_delimiter = ',')]
    fanout_subscribers: Vec<usize>,
    /// fanout: run the rounds this many times over on the same subscribers; the p99 rows are
    /// the median of the repeats' p99s (the "p99 … lo/hi" rows their spread).
    #[arg(long, default_value_t = 1)]
    fanout_repeats: usize,
    /// mass-subscribe: registry sessions (etcd: watch streams) [2,000; --quick 20].
    #[arg(long)]
    mass_sessions: Option<usize>,
    /// mass-subscribe: subscribers per session (etcd: watchers per watch stream) [50; --quick 10].
    #[arg(long)]
    mass_subscribers_per_session: Option<usize>,
    /// mass-subscribe: changes made one after the other, each to reach every subscriber.
    #[arg(long, default_value_t = 3)]
    mass_rounds: usize,
    /// mass-churn: publishers, spread evenly over --churn-publisher-sessions [100,000; --quick 2,000].
    #[arg(long)]
    churn_publishers: Option<usize>,
    /// mass-churn: sessions holding the publishers (each session's in one service) [1,000; --quick 20].
    #[arg(long)]
    churn_publisher_sessions: Option<usize>,
    /// mass-churn: subscribers, in sessions of --mass-subscribers-per-session [10,000; --quick 200].
    #[arg(long)]
    churn_subscribers: Option<usize>,
    /// mass-churn: services the publishers and subscribers are spread over [100; --quick 10].
    #[arg(long)]
    churn_services: Option<usize>,
    /// mass-churn: share of the publisher sessions that end and come back.
    #[arg(long, default_value_t = 0.1)]
    churn_share: f64,
    /// mass-churn: every churned session ends and is back within this window [60; --quick 4].
    #[arg(long)]
    churn_window_seconds: Option<u64>,
    /// bytes-per-change: instances of the service one instance of which changes.
    #[arg(long, default_value_t = 5000)]
    bytes_instances: usize,
    #[arg(long, default_value_t = 3)]
    replication_factor: usize,
    #[arg(long, default_value_t = 64)]
    register_clients: usize,
    #[arg(long)]
    registrations: Option<usize>,
    /// Registrations per request in the register-batch workload.
    #[arg(long, default_value_t = 50)]
    register_batch_size: usize,
    #[arg(long, default_value_t = 100)]
    services: usize,
    #[arg(long)]
    subscribers: Option<usize>,
    #[arg(long)]
    rounds: Option<usize>,
    /// registry-cluster fanout: share of the subscribers on the session node the writer
    /// does not use (their pushes cross nodes; reported separately as "cross-node").
    #[arg(long, default_value_t = 0.5)]
    fanout_cross_share: f64,
    /// Session TTL / lease TTL / ZooKeeper session timeout of the churn clients.
    #[arg(long, default_value_t = 5)]
    churn_ttl_seconds: u64,
    #[arg(long, default_value_t = 20)]
    churn_clients: usize,
    #[arg(long)]
    churn_registrations: Option<usize>,
    #[arg(long, default_value_t = 10)]
    churn_vanish: usize,
    /// Registration counts of the scale workload (a fresh server each).
    #[arg(long, value_delimiter = ',')]
    scale_counts: Vec<usize>,
    /// etcd and ZooKeeper run the scale steps up to this count only.
    #[arg(long)]
    scale_peers_max: Option<usize>,
    #[arg(long, default_value_t = 128)]
    scale_clients: usize,
    #[arg(long, default_value_t = 1000)]
    scale_services: usize,
    /// A scale step that has not finished registering by then reports what it reached.
    #[arg(long, default_value_t = 300)]
    scale_deadline_seconds: u64,
    /// failover: publishing clients (round robin over both session nodes).
    #[arg(long, default_value_t = 16)]
    failover_publishers: usize,
    /// failover: registrations before the load starts.
    #[arg(long)]
    failover_registrations: Option<usize>,
    #[arg(long, default_value_t = 20)]
    failover_services: usize,
    #[arg(long)]
    failover_subscribers: Option<usize>,
    /// failover: new registrations per second, from 1 s before the kill until convergence.
    #[arg(long, default_value_t = 200.0)]
    failover_rate: f64,
    /// failover: from the SIGKILL to posting the membership without the node (the
    /// operator's detection time).
    #[arg(long, default_value_t = 1000)]
    failover_membership_delay_ms: u64,
    #[arg(long, default_value_t = 60)]
    failover_deadline_seconds: u64,
    /// JSON lines output, one object per (backend, workload).
    #[arg(long, default_value = "target/bench/results.jsonl")]
    json_out: PathBuf,
    /// Write the fan-out latency plot here (default: next to --markdown, or target/bench/);
    /// the mass-subscribe and mass-churn plots go beside it.
    #[arg(long)]
    svg_out: Option<PathBuf>,
    /// Update this BENCHMARKS.md's generated section (other sections are kept).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Free text on the machine's load during the run, copied into BENCHMARKS.md.
    #[arg(long, default_value = "")]
    load_note: String,
}

fn pick<T: Copy>(given: Option<T>, quick: bool, short: T, full: T) -> T {
    given.unwrap_or(if quick { short } else { full })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.fanout_cross_share) {
        anyhow::bail!(
            "--fanout-cross-share must be between 0 and 1, got {}",
            args.fanout_cross_share
        );
    }
    if !(args.failover_rate > 0.0 && args.failover_rate.is_finite()) {
        anyhow::bail!(
            "--failover-rate must be a positive number of publishes per second, got {}",
            args.failover_rate
        );
    }
    if args.failover_publishers == 0
        || args.failover_services == 0
        || args.failover_subscribers == Some(0)
    {
        anyhow::bail!("--failover-publishers, --failover-services and --failover-subscribers must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.churn_share) {
        anyhow::bail!(
            "--churn-share must be between 0 and 1, got {}",
            args.churn_share
        );
    }
    if args.fanout_subscribers.contains(&0) {
        anyhow::bail!("--fanout-subscribers must be at least 1 each");
    }
    let q = args.quick;
    let cfg = ServerConfig {
        registry_bin: match &args.registry_bin {
            Some(bin) => bin.clone(),
            // This workspace's registry-node in the bench's own profile, built when missing or stale.
            None if args
                .backends
                .iter()
                .any(|k| matches!(k, BackendKind::Registry | BackendKind::RegistryCluster)) =>
            {
                testkit::binary::REGISTRY_NODE.try_path()?
            }
            None => PathBuf::new(),
        },
        push_delay_ms: args.push_delay_ms,
        replication_factor: args.replication_factor,
    };
    let reg = RegisterParams {
        clients: args.register_clients,
        registrations: pick(args.registrations, q, 2_000, 20_000),
        services: args.services,
        batch: 1,
    };
    let reg_batch = RegisterParams {
        batch: args.register_batch_size.max(1),
        ..reg.clone()
    };
    let fanout_delay_ms = args.fanout_push_delay_ms.unwrap_or(args.push_delay_ms);
    let fan_cfg = ServerConfig {
        push_delay_ms: fanout_delay_ms,
        ..cfg.clone()
    };
    let fan_counts: Vec<usize> = if args.fanout_subscribers.is_empty() {
        vec![pick(args.subscribers, q, 100, 1_000)]
    } else {
        args.fanout_subscribers.clone()
    };
    let fan_label = |n: usize| {
        if fan_counts.len() == 1 {
            "fanout".to_string()
        } else {
            format!("fanout-{n}")
        }
    };
    let fan = FanoutParams {
        subscribers: fan_counts[0],
        rounds: pick(args.rounds, q, 5, 20),
        deadline: Duration::from_millis(fanout_delay_ms) + Duration::from_secs(10),
        cross_share: args.fanout_cross_share,
        repeats: args.fanout_repeats.max(1),
        label: fan_label(fan_counts[0]),
    };
    let mass_per = pick(args.mass_subscribers_per_session, q, 10, 50).max(1);
    let mass_sub = MassSubscribeParams {
        sessions: pick(args.mass_sessions, q, 20, 2_000),
        per_session: mass_per,
        rounds: args.mass_rounds.max(1),
        deadline: Duration::from_millis(fanout_delay_ms) + Duration::from_secs(60),
        push_delay_ms: fanout_delay_ms,
    };
    let mass_churn = MassChurnParams {
        publishers: pick(args.churn_publishers, q, 2_000, 100_000),
        publisher_sessions: pick(args.churn_publisher_sessions, q, 20, 1_000),
        subscribers: pick(args.churn_subscribers, q, 200, 10_000),
        per_session: mass_per,
        services: pick(args.churn_services, q, 10, 100),
        churn_share: args.churn_share,
        window: Duration::from_secs(pick(args.churn_window_seconds, q, 4, 60)),
        push_delay: Duration::from_millis(args.push_delay_ms),
    };
    let bytes = BytesParams {
        instances: args.bytes_instances.max(1),
        rounds: 3,
    };
    let fo = FailoverParams {
        publishers: args.failover_publishers,
        registrations: pick(args.failover_registrations, q, 500, 5_000),
        services: args.failover_services,
        subscribers: pick(args.failover_subscribers, q, 40, 200),
        rate: args.failover_rate,
        lead: Duration::from_secs(1),
        membership_delay: Duration::from_millis(args.failover_membership_delay_ms),
        deadline: Duration::from_secs(args.failover_deadline_seconds),
        replication_factor: args.replication_factor,
        victim: 0,
    };
    let churn = ChurnParams {
        clients: args.churn_clients,
        registrations: pick(args.churn_registrations, q, 400, 2_000),
        vanish: args.churn_vanish,
        ttl: Duration::from_secs(args.churn_ttl_seconds),
    };
    let scale_counts = if !args.scale_counts.is_empty() {
        args.scale_counts.clone()
    } else if q {
        vec![10_000]
    } else {
        vec![100_000, 1_000_000]
    };
    let big_scale = scale_counts.iter().copied().max().unwrap_or(0);
    let peers_max = args.scale_peers_max.unwrap_or(usize::MAX);

    if let Some(dir) = args.json_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut jsonl = std::fs::File::create(&args.json_out)
        .with_context(|| format!("creating {}", args.json_out.display()))?;
    let machine = Machine::probe();
    eprintln!("bench: {} · {}", machine.cpu_line(), machine.load_line());

    let mut records: Vec<Record> = Vec::new();
    // Latency samples per backend for the plots: fan-out, mass-subscribe, mass-churn.
    let mut fan_series: Vec<(String, Vec<f64>)> = Vec::new();
    let mut mass_series: Vec<(String, Vec<f64>)> = Vec::new();
    let mut churn_series: Vec<(String, Vec<f64>)> = Vec::new();
    let mut emit = |r: Record, records: &mut Vec<Record>| {
        eprintln!("bench: {}", r.to_json());
        let _ = writeln!(jsonl, "{}", r.to_json());
        records.push(r);
    };
    for &kind in &args.backends {
        let name = kind.name();
        if let Err(e) = check_tools(kind, &cfg) {
            emit(Record::failed(name, "all", format!("{e:#}")), &mut records);
            continue;
        }
        // (workload, its name in the report, fanout's subscriber count).
        let mut jobs: Vec<(Workload, String, usize)> = Vec::new();
        for &w in &args.workloads {
            // The report's name of a workload is its name on the command line.
            let label = w
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned());
            let skip = match (w, kind) {
                (Workload::Fanout, _) => {
                    for &n in &fan_counts {
                        jobs.push((w, fan_label(n), n));
                    }
                    continue;
                }
                (Workload::Failover, BackendKind::RegistryCluster) => None,
                (Workload::Failover | Workload::Scale, _) => continue,
                (Workload::MassChurn, BackendKind::Zookeeper) => Some(
                    "not run: a ZooKeeper watch fires once per change and is re-armed by a read, with no push delay to merge changes in, so pushes per merge window has no ZooKeeper equivalent",
                ),
                (Workload::BytesPerChange, BackendKind::Zookeeper) => Some(
                    "not run: a ZooKeeper child watch event carries no data (the client re-reads the children), so there is no push to compare",
                ),
                (Workload::MassChurn, BackendKind::Etcd) => Some(
                    "not run: etcd has no push delay to merge changes in (every key change is one watch event), so pushes per merge window has no etcd equivalent",
                ),
                (Workload::BytesPerChange, BackendKind::Etcd) => Some(
                    "not run: an etcd watch event carries the changed key only (no full-list push to compare)",
                ),
                _ => None,
            };
            if let Some(why) = skip {
                let mut r = Record::new(name, &label);
                r.notes.push(why.into());
                emit(r, &mut records);
                continue;
            }
            jobs.push((w, label, 0));
        }
        for (w, label, fan_n) in jobs {
            let label = label.as_str();
            eprintln!("bench: {name} / {label} …");
            let server_cfg = if matches!(w, Workload::Fanout | Workload::MassSubscribe) {
                &fan_cfg
            } else {
                &cfg
            };
            let mut server = match Server::start(kind, server_cfg).await {
                Ok(s) => s,
                Err(e) => {
                    emit(
                        Record::failed(name, label, format!("server did not start: {e:#}")),
                        &mut records,
                    );
                    continue;
                }
            };
            let outcome = tokio::time::timeout(Duration::from_secs(900), async {
                match w {
                    Workload::Register => workloads::register(&server, &reg).await,
                    Workload::RegisterBatch => workloads::register(&server, &reg_batch).await,
                    Workload::Fanout => {
                        let p = FanoutParams {
                            subscribers: fan_n,
                            label: label.to_string(),
                            ..fan.clone()
                        };
                        let (mut r, lat) = workloads::fanout(&server, &p).await?;
                        r.metric("push_delay_ms", fanout_delay_ms as f64);
                        let series = if fan_counts.len() == 1 {
                            name.to_string()
                        } else {
                            format!("{name} ({fan_n})")
                        };
                        fan_series.push((series, lat));
                        Ok(r)
                    }
                    Workload::Churn => workloads::churn(&server, &churn).await,
                    Workload::Failover => failover::failover(&mut server, &fo).await,
                    Workload::MassSubscribe => {
                        let (r, lat) = mass::mass_subscribe(&server, &mass_sub).await?;
                        mass_series.push((name.to_string(), lat));
                        Ok(r)
                    }
                    Workload::MassChurn => {
                        let (r, lat) = mass::mass_churn(&server, &mass_churn).await?;
                        churn_series.push((name.to_string(), lat));
                        Ok(r)
                    }
                    Workload::BytesPerChange => mass::bytes_per_change(&server, &bytes).await,
                    Workload::Scale => unreachable!(),
                }
            })
            .await;
            let mut r = match outcome {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Record::failed(name, label, format!("{e:#}")),
                Err(_) => Record::failed(name, label, "did not finish within 900 s".into()),
            };
            r.metric(
                "peak_rss_mib",
                server.memory_bytes("VmHWM") as f64 / 1048576.0,
            );
            if let Err(e) = server.check_alive() {
                r.notes.push(format!("server died: {e:#}"));
            }
            if server.process_count() > 1 {
                r.notes.push(format!(
                    "memory summed over {} processes",
                    server.process_count()
                ));
            }
            server.stop().await;
            emit(r, &mut records);
        }
        if args.workloads.contains(&Workload::Scale) {
            for &count in &scale_counts {
                if !kind.is_registry() && count > peers_max {
                    continue;
                }
                let label = format!("scale-{count}");
                eprintln!("bench: {name} / {label} …");
                let p = ScaleParams {
                    count,
                    clients: args.scale_clients,
                    services: args.scale_services,
                    deadline: Duration::from_secs(args.scale_deadline_seconds),
                    replication_factor: cfg.replication_factor,
                };
                let mut server = match Server::start(kind, &cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        emit(
                            Record::failed(name, &label, format!("server did not start: {e:#}")),
                            &mut records,
                        );
                        continue;
                    }
                };
                let mut r = match workloads::scale(&server, &p).await {
                    Ok(r) => r,
                    Err(e) => Record::failed(name, &label, format!("{e:#}")),
                };
                r.metric(
                    "peak_rss_mib",
                    server.memory_bytes("VmHWM") as f64 / 1048576.0,
                );
                if let Err(e) = server.check_alive() {
                    r.notes.push(format!("server died: {e:#}"));
                }
                server.stop().await;
                emit(r, &mut records);
            }
        }
    }

    let names: Vec<&str> = args.backends.iter().map(|b| b.name()).collect();
    let table = report::render_table(&records, &names);
    let notes = report::render_notes(&records);
    let targets = report::check_targets(&records, fanout_delay_ms, big_scale);
    let targets_md = report::render_targets(&targets);
    let push_targets_md = report::render_targets(&report::check_push_targets(
        &records,
        fanout_delay_ms,
        big_scale,
    ));
    println!("\n{table}\n{notes}\n{targets_md}\n{push_targets_md}");
    println!("JSON lines: {}", args.json_out.display());

    let svg_path = args
        .svg_out
        .clone()
        .unwrap_or_else(|| match &args.markdown {
            Some(md) => md
                .parent()
                .unwrap_or(Path::new("."))
                .join("docs/bench-fanout-latency.svg"),
            None => PathBuf::from("target/bench/fanout-latency.svg"),
        });
    // The other plots go beside the fan-out plot, named like it (`bench-…` in docs/).
    let plot_dir = svg_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let plot_prefix = match svg_path.file_name() {
        Some(n) if n.to_string_lossy().starts_with("bench-") => "bench-",
        _ => "",
    };
    let sibling = |kind: &str| plot_dir.join(format!("{plot_prefix}{kind}-latency.svg"));
    let mut plots: Vec<(PathBuf, &str)> = Vec::new();
    for (path, series, svg, alt) in [
        (
            svg_path.clone(),
            &fan_series,
            report::fanout_svg(&fan_series),
            "fan-out latency CDF per backend",
        ),
        (
            sibling("mass-subscribe"),
            &mass_series,
            report::latency_cdf_svg(
                &format!(
                    "mass-subscribe: {} subscribers on one service, change → seen (CDF)",
                    mass_sub.sessions * mass_sub.per_session
                ),
                &mass_series,
            ),
            "mass-subscribe latency CDF per backend (issue 17 b)",
        ),
        (
            sibling("mass-churn"),
            &churn_series,
            report::latency_cdf_svg(
                &format!(
                    "mass-churn: {} publishers, {:.0}% of their sessions end and return, change → push (CDF)",
                    mass_churn.publishers,
                    mass_churn.churn_share * 100.0
                ),
                &churn_series,
            ),
            "mass-churn change → push latency CDF (issue 17 f)",
        ),
    ] {
        if series.is_empty() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, svg)?;
        println!("plot: {}", path.display());
        plots.push((path, alt));
    }
    if let Some(md) = &args.markdown {
        let machine_after = Machine::probe();
        let mut section = String::new();
        let _ = writeln!(
            section,
            "Generated {} by:\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(section, "```sh\n{}\n```\n", command_line());
        let _ = writeln!(section, "- machine: {}", machine.cpu_line());
        let _ = writeln!(
            section,
            "- load: {} at the start, {} at the end",
            machine.load_line(),
            machine_after.load_line()
        );
        if !args.load_note.is_empty() {
            let _ = writeln!(section, "- conditions: {}", args.load_note);
        }
        let _ = writeln!(section, "- servers: {}", versions());
        let _ = writeln!(
            section,
            "- registry: push delay {} ms, replication factor {}; etcd and ZooKeeper keep their data on tmpfs (/dev/shm) so their fsyncs cost no disk; the benchmark client runs on the same 2 cores",
            args.push_delay_ms, args.replication_factor
        );
        let _ = writeln!(
            section,
            "- workloads: register {} registrations by {} clients over {} services; fanout {:?} subscribers × {} rounds × {} repeats (push delay {} ms); churn {} registrations by {} clients, {} vanish (TTL {} s); scale {:?} registrations by {} clients over {} services (etcd/ZooKeeper up to {})",
            reg.registrations, reg.clients, reg.services, fan_counts, fan.rounds, fan.repeats, fanout_delay_ms, churn.registrations, churn.clients, churn.vanish,
            args.churn_ttl_seconds, scale_counts, args.scale_clients, args.scale_services,
            if peers_max == usize::MAX { "every count".to_string() } else { peers_max.to_string() }
        );
        if args.workloads.contains(&Workload::MassSubscribe) {
            let _ = writeln!(
                section,
                "- mass-subscribe: {} subscribers on one service as {} sessions × {} (etcd: watch streams × watchers over at most 16 connections; ZooKeeper: sessions × child watches), {} changes, push delay {} ms",
                mass_sub.sessions * mass_sub.per_session, mass_sub.sessions, mass_sub.per_session, mass_sub.rounds, fanout_delay_ms
            );
        }
        if args.workloads.contains(&Workload::MassChurn) {
            let _ = writeln!(
                section,
                "- mass-churn (registry only): {} publishers in {} sessions over {} services, {} subscribers; {:.0}% of the sessions end and come back within {} s",
                mass_churn.publishers, mass_churn.publisher_sessions, mass_churn.services, mass_churn.subscribers,
                mass_churn.churn_share * 100.0, mass_churn.window.as_secs()
            );
        }
        if args.workloads.contains(&Workload::BytesPerChange) {
            let _ = writeln!(
                section,
                "- bytes-per-change (registry only): one instance of {} replaced, bytes read off the stream per subscriber (median of {} changes)",
                bytes.instances, bytes.rounds
            );
        }
        if args.workloads.contains(&Workload::Failover)
            && args.backends.contains(&BackendKind::RegistryCluster)
        {
            let _ = writeln!(
                section,
                "- failover (registry-cluster only): {} registrations by {} clients over {} services, {} subscribers, {} new registrations/s from 1 s before the SIGKILL of a data node; membership without it posted {} ms after the kill",
                fo.registrations, fo.publishers, fo.services, fo.subscribers, args.failover_rate, args.failover_membership_delay_ms
            );
        }
        if args.backends.contains(&BackendKind::RegistryCluster) {
            let _ = writeln!(
                section,
                "- registry-cluster fanout: the writer on session node 0, {:.0}% of the subscribers on session node 1 (\"cross-node\" rows), the rest on node 0",
                args.fanout_cross_share.clamp(0.0, 1.0) * 100.0
            );
        }
        let _ = writeln!(section, "\n{table}");
        if !notes.is_empty() {
            let _ = writeln!(section, "{notes}");
        }
        let _ = writeln!(section, "Targets (issue 7):\n\n{targets_md}");
        let _ = writeln!(
            section,
            "Targets of push at scale (issue 17; a target whose workload did not run is n/a):\n\n{push_targets_md}"
        );
        for (path, alt) in &plots {
            let rel = relative_to(path, md.parent().unwrap_or(Path::new(".")));
            let _ = writeln!(section, "![{alt}]({rel})\n");
        }
        let existing = std::fs::read_to_string(md).unwrap_or_default();
        std::fs::write(md, report::splice_section(&existing, &section))?;
        println!("updated {}", md.display());
    }
    Ok(())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./,=:".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    format!("cargo run --release -p bench -- {}", args.join(" "))
        .trim_end()
        .to_string()
}

fn relative_to(path: &Path, base: &Path) -> String {
    // `Path::parent` of a bare file name is "", which canonicalize rejects: that is ".".
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let b = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    p.strip_prefix(&b)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

fn versions() -> String {
    let out = std::process::Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Package} ${Version}, ",
            "etcd-server",
            "zookeeper",
        ])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .trim_end_matches([',', ' '])
            .to_string(),
        Err(_) => "unknown".into(),
    }
}

struct Machine {
    nproc: usize,
    cpu: String,
    load: String,
}

impl Machine {
    fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Self { nproc, cpu, load }
    }
    fn cpu_line(&self) -> String {
        format!("nproc {}, {}", self.nproc, self.cpu)
    }
    fn load_line(&self) -> String {
        format!("loadavg {}", self.load)
    }
}
