//! Results and their presentation: JSON lines, the comparison table, target checks, the
//! fan-out latency plot (SVG) and the BENCHMARKS.md section.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::stats::percentile;

/// The outcome of one workload on one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub backend: String,
    pub workload: String,
    /// Ordered as recorded, so the table lists them in a sensible order.
    pub metrics: Vec<(String, f64)>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

impl Record {
    pub fn new(backend: &str, workload: &str) -> Self {
        Self {
            backend: backend.into(),
            workload: workload.into(),
            metrics: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub fn failed(backend: &str, workload: &str, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(backend, workload)
        }
    }

    pub fn metric(&mut self, key: &str, value: f64) {
        match self.metrics.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metrics.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("backend".into(), json!(self.backend));
        m.insert("workload".into(), json!(self.workload));
        for (k, v) in &self.metrics {
            m.insert(k.clone(), json!(v));
        }
        if !self.notes.is_empty() {
            m.insert("notes".into(), json!(self.notes));
        }
        if let Some(e) = &self.error {
            m.insert("error".into(), json!(e));
        }
        Value::Object(m)
    }
}

fn label(key: &str) -> &str {
    match key {
        "regs_per_s" => "registrations/s",
        "p50_ms" => "p50 ms",
        "p99_ms" => "p99 ms",
        "max_ms" => "max ms",
        "errors" => "errors",
        "batch_size" => "registrations per request",
        "server_cpu_us_per_reg" => "server CPU µs / registration",
        "client_cpu_us_per_reg" => "bench client CPU µs / registration",
        "misses" => "misses",
        "deliveries" => "deliveries seen",
        "ttl_s" => "TTL s",
        "gone_after_s" => "all gone after s",
        "first_gone_s" => "first gone after s",
        "survivors_lost" => "survivors lost",
        "registrations" => "registrations done",
        "rss_mib" => "RSS MiB",
        "bytes_per_reg" => "RSS bytes / registration",
        "bytes_per_replica" => "RSS bytes / registration-replica",
        "peak_rss_mib" => "server peak RSS MiB",
        "cross_subscribers" => "cross-node subscribers",
        "cross_p50_ms" => "cross-node p50 ms",
        "cross_p99_ms" => "cross-node p99 ms",
        "cross_max_ms" => "cross-node max ms",
        "cross_misses" => "cross-node misses",
        "same_p99_ms" => "same-node p99 ms",
        "membership_after_s" => "membership without the killed node posted after s",
        "subs_converged_s" => "every subscriber complete after s",
        "replicas_converged_s" => "every publisher fully replicated after s",
        "publishers_lost" => "publishers lost",
        "under_replicated_end" => "publishers under-replicated at the end",
        "dropped_pushes" => "pushes that dropped a seen instance",
        "publishers_total" => "publishers acknowledged",
        "publishes_during" => "publishes acknowledged after the kill",
        "publish_rate_during" => "publishes/s after the kill",
        "publish_errors" => "publish errors",
        "subscribers" => "subscribers",
        "push_delay_ms" => "push delay ms",
        "start_p50_ms" => "write start → seen p50 ms",
        "start_p99_ms" => "write start → seen p99 ms",
        "start_max_ms" => "write start → seen max ms",
        "repeats" => "repeats (p99 rows: median of their p99s)",
        "start_p99_lo_ms" => "write start → seen p99, lowest repeat ms",
        "start_p99_hi_ms" => "write start → seen p99, highest repeat ms",
        "sessions" => "sessions (etcd: watch streams)",
        "setup_s" => "setup s (not measured in latencies)",
        "rss_before_mib" => "server RSS before the subscribers MiB",
        "rss_after_mib" => "server RSS after the subscribers MiB",
        "rss_bytes_per_sub" => "server RSS bytes / subscriber",
        "client_rss_mib" => "bench client RSS MiB",
        "client_peak_rss_mib" => "bench client peak RSS MiB",
        "client_threads" => "bench client threads",
        "publishers" => "publishers",
        "churned_sessions" => "sessions ended and back",
        "changes" => "changes (session end or return)",
        "max_pushes_per_window" => "most pushes to one subscriber within one push delay",
        "pushes_per_sub" => "pushes per subscriber during the churn",
        "instances" => "instances in the service",
        "full_push_bytes" => "bytes on the wire / change: full push",
        "gzip_push_bytes" => "bytes on the wire / change: gzip stream",
        "delta_push_bytes" => "bytes on the wire / change: delta push",
        other => other,
    }
}

pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A Markdown pipe table: one row per (workload, metric), one column per backend.
pub fn render_table(records: &[Record], backends: &[&str]) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in records {
        for (k, _) in &r.metrics {
            let row = (r.workload.clone(), k.clone());
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        if r.error.is_some() && !rows.iter().any(|(w, _)| *w == r.workload) {
            rows.push((r.workload.clone(), String::new()));
        }
    }
    let mut out = String::new();
    let _ = write!(out, "| workload | metric |");
    for b in backends {
        let _ = write!(out, " {b} |");
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---:|".repeat(backends.len()));
    out.push('\n');
    for (workload, key) in &rows {
        let _ = write!(
            out,
            "| {workload} | {} |",
            if key.is_empty() { "" } else { label(key) }
        );
        for b in backends {
            let rec = records
                .iter()
                .find(|r| r.backend == *b && r.workload == *workload);
            let cell = match rec {
                Some(r) if r.error.is_some() => "failed".to_string(),
                Some(r) => r.get(key).map(format_value).unwrap_or_else(|| "–".into()),
                None => "–".into(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// Errors and notes of every record, one bullet each.
pub fn render_notes(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "- {} / {}: **failed**: {}",
                r.backend,
                r.workload,
                one_line(e)
            );
        }
        for n in &r.notes {
            let _ = writeln!(out, "- {} / {}: {}", r.backend, r.workload, one_line(n));
        }
    }
    out
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 400 {
        s.chars().take(400).collect::<String>() + "…"
    } else {
        s
    }
}

/// One target of the issue, checked against the measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub measured: String,
    /// None when a figure it needs is missing from this run.
    pub met: Option<bool>,
}

fn find<'a>(records: &'a [Record], backend: &str, workload: &str) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.backend == backend && r.workload == workload && r.error.is_none())
}

/// `fanout` or `fanout-<count>`.
fn is_fanout(workload: &str) -> bool {
    workload == "fanout"
        || workload
            .strip_prefix("fanout-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The fan-out workloads of the run, in order: `fanout`, or one per subscriber count.
fn fanout_workloads(records: &[Record]) -> Vec<&str> {
    let mut fanouts: Vec<&str> = Vec::new();
    for r in records.iter().filter(|r| is_fanout(&r.workload)) {
        if !fanouts.contains(&r.workload.as_str()) {
            fanouts.push(&r.workload);
        }
    }
    fanouts
}

/// `ours`'s registration rate over `peer`'s in `workload`, and how the report says it.
fn rate_ratio(records: &[Record], ours: &str, peer: &str, workload: &str) -> Option<(f64, String)> {
    let regs = |b: &str| find(records, b, workload).and_then(|r| r.get("regs_per_s"));
    let (a, b) = (regs(ours)?, regs(peer)?);
    (b > 0.0).then(|| {
        (
            a / b,
            format!(
                "{:.2}× ({} vs {} registrations/s)",
                a / b,
                format_value(a),
                format_value(b)
            ),
        )
    })
}

/// The issue's targets for each registry backend present in the run.
pub fn check_targets(records: &[Record], push_delay_ms: u64, big_scale: usize) -> Vec<Target> {
    let mut out = Vec::new();
    for ours in ["registry", "registry-cluster"] {
        if !records.iter().any(|r| r.backend == ours) {
            continue;
        }
        // One registration per request, then every backend's batch operation.
        for (workload, how) in [("register", ""), ("register-batch", ", batched")] {
            if workload == "register-batch" && !records.iter().any(|r| r.workload == workload) {
                continue;
            }
            for (peer, goal) in [("etcd", 3.0), ("zookeeper", 5.0)] {
                let (measured, met) = match rate_ratio(records, ours, peer, workload) {
                    Some((ratio, measured)) => (measured, Some(ratio >= goal)),
                    None => ("not measured".into(), None),
                };
                out.push(Target {
                    name: format!("{ours}: registration throughput ≥ {goal}× {peer}{how}"),
                    measured,
                    met,
                });
            }
        }
        let limit = push_delay_ms as f64 + 50.0;
        // One fanout record, or one per subscriber count (`fanout-<count>`).
        let mut fanouts = fanout_workloads(records);
        if fanouts.is_empty() {
            fanouts.push("fanout");
        }
        for fanout in fanouts {
            let (measured, met) = match find(records, ours, fanout) {
                Some(r) => match (r.get("p99_ms"), r.get("misses")) {
                    (Some(p99), Some(misses)) => (
                        format!(
                            "p99 {} ms, {} misses (limit {} ms)",
                            format_value(p99),
                            format_value(misses),
                            format_value(limit)
                        ),
                        Some(p99 <= limit && misses == 0.0),
                    ),
                    _ => ("no deliveries".into(), Some(false)),
                },
                None => ("not measured".into(), None),
            };
            let which = if fanout == "fanout" {
                String::new()
            } else {
                format!(" ({fanout})")
            };
            out.push(Target {
                name: format!("{ours}: fan-out p99 ≤ push delay + 50 ms, no misses{which}"),
                measured,
                met,
            });
        }
        let workload = format!("scale-{big_scale}");
        let (measured, met) = match find(records, ours, &workload) {
            Some(r) => match (r.get("bytes_per_replica"), r.get("registrations")) {
                (Some(b), Some(n)) if n as usize >= big_scale => {
                    (format!("{} bytes", format_value(b)), Some(b <= 1024.0))
                }
                (Some(b), Some(n)) => (
                    format!(
                        "{} bytes, but only {} registrations",
                        format_value(b),
                        format_value(n)
                    ),
                    Some(false),
                ),
                _ => ("no figure".into(), Some(false)),
            },
            None => ("not measured".into(), None),
        };
        out.push(Target {
            name: format!(
                "{ours}: ≤ 1 KiB RSS per registration-replica at {big_scale} registrations"
            ),
            measured,
            met,
        });
    }
    out
}

/// A target that needs two figures of one record: `Some((a, b))`, or why not.
fn pair(r: Option<&Record>, a: &str, b: &str) -> Result<(f64, f64), &'static str> {
    let r = r.ok_or("not measured")?;
    Ok((r.get(a).ok_or("no figure")?, r.get(b).ok_or("no figure")?))
}

fn target(name: String, result: Result<(String, bool), &'static str>) -> Target {
    match result {
        Ok((measured, met)) => Target {
            name,
            measured,
            met: Some(met),
        },
        // A workload that ran without its figure missed it; one that did not run (or not
        // under the target's conditions) is n/a.
        Err(why) => Target {
            name,
            met: (why == "no figure").then_some(false),
            measured: why.into(),
        },
    }
}

/// The push-at-scale targets (issue 17, a to f) for the standalone registry, and d for the
/// cluster. `fanout_delay_ms` is the push delay of the fan-out run (a. is about delay 0);
/// `big_scale` the largest scale count (e. is about 10,000,000 against 100,000).
pub fn check_push_targets(
    records: &[Record],
    fanout_delay_ms: u64,
    big_scale: usize,
) -> Vec<Target> {
    let mut out = Vec::new();
    let ours = "registry";
    // a. Delay-0 fan-out, write start → seen, against etcd's watch, per subscriber count.
    for fanout in fanout_workloads(records) {
        let p99 = |b: &str| find(records, b, fanout).and_then(|r| r.get("start_p99_ms"));
        let result = match (p99(ours), p99("etcd")) {
            _ if fanout_delay_ms != 0 => Err("not a delay-0 run"),
            (Some(a), Some(b)) => Ok((
                format!("p99 {} ms vs etcd {} ms", format_value(a), format_value(b)),
                a <= b,
            )),
            (None, _) if find(records, ours, fanout).is_none() => Err("not measured"),
            (_, None) if find(records, "etcd", fanout).is_none() => Err("not measured"),
            _ => Err("no figure"),
        };
        out.push(target(
            format!("a. delay-0 fan-out p99 write start → seen ≤ etcd's ({fanout})"),
            result,
        ));
    }
    // b. 100,000 subscribers on one service: p99 ≤ 1 s at delay 0, ≤ 2 KiB RSS each.
    let mass = find(records, ours, "mass-subscribe");
    out.push(target(
        "b. mass-subscribe: change → seen p99 ≤ 1 s at push delay 0, no misses".into(),
        pair(mass, "p99_ms", "misses").and_then(|(p99, misses)| {
            let delay = mass.and_then(|r| r.get("push_delay_ms")).unwrap_or(0.0);
            if delay != 0.0 {
                return Err("not a delay-0 run");
            }
            let n = mass.and_then(|r| r.get("subscribers")).unwrap_or(0.0);
            Ok((
                format!(
                    "p99 {} ms, {} misses, {} subscribers",
                    format_value(p99),
                    format_value(misses),
                    format_value(n)
                ),
                p99 <= 1000.0 && misses == 0.0,
            ))
        }),
    ));
    out.push(target(
        "b. mass-subscribe: ≤ 2 KiB server RSS per subscriber".into(),
        pair(mass, "rss_bytes_per_sub", "subscribers").map(|(b, _)| {
            (
                format!("{} bytes per subscriber", format_value(b)),
                b <= 2048.0,
            )
        }),
    ));
    // c. A one-instance change: ≤ 1 KiB per subscriber by an opt-in means.
    let bytes = find(records, ours, "bytes-per-change");
    out.push(target(
        "c. one-instance change ≤ 1 KiB per subscriber on the wire (delta or gzip stream)".into(),
        pair(bytes, "delta_push_bytes", "gzip_push_bytes").map(|(delta, gzip)| {
            let full = bytes
                .and_then(|r| r.get("full_push_bytes"))
                .unwrap_or(f64::NAN);
            (
                format!(
                    "delta {} B, gzip {} B (full {} B)",
                    format_value(delta),
                    format_value(gzip),
                    format_value(full)
                ),
                delta.min(gzip) <= 1024.0,
            )
        }),
    ));
    // d. The cluster against etcd, one registration per request.
    out.push(target(
        "d. registry-cluster registrations/s ≥ 3× etcd".into(),
        rate_ratio(records, "registry-cluster", "etcd", "register")
            .map(|(ratio, measured)| (measured, ratio >= 3.0))
            .ok_or("not measured"),
    ));
    // e. The largest scale run: ≤ 600 B RSS each, rate ≥ 80 % of the rate at 100,000.
    let big = find(records, ours, &format!("scale-{big_scale}"));
    let base = find(records, ours, "scale-100000");
    out.push(target(
        format!("e. {big_scale} publishers: ≤ 600 B RSS each, rate ≥ 80 % of the rate at 100000"),
        match (
            pair(big, "bytes_per_reg", "regs_per_s"),
            base.and_then(|r| r.get("regs_per_s")),
        ) {
            _ if big_scale < 10_000_000 => Err("not measured"),
            (Ok((bytes, rate)), Some(rate0)) if rate0 > 0.0 => {
                let done = big.and_then(|r| r.get("registrations")).unwrap_or(0.0);
                Ok((
                    format!(
                        "{} B each, {} /s = {:.0} % of {} /s",
                        format_value(bytes),
                        format_value(rate),
                        100.0 * rate / rate0,
                        format_value(rate0)
                    ),
                    done >= big_scale as f64 && bytes <= 600.0 && rate >= 0.8 * rate0,
                ))
            }
            (Err(e), _) => Err(e),
            _ => Err("not measured"),
        },
    ));
    // f. Mass churn: p99 ≤ push delay + 1 s and at most one push per merge window.
    let churn = find(records, ours, "mass-churn");
    out.push(target(
        "f. mass churn: change → push p99 ≤ push delay + 1 s, ≤ 1 push per subscriber per window"
            .into(),
        pair(churn, "p99_ms", "max_pushes_per_window").map(|(p99, most)| {
            let delay = churn.and_then(|r| r.get("push_delay_ms")).unwrap_or(0.0);
            let misses = churn.and_then(|r| r.get("misses")).unwrap_or(0.0);
            (
                format!(
                    "p99 {} ms at delay {} ms, at most {} per window, {} misses",
                    format_value(p99),
                    format_value(delay),
                    format_value(most),
                    format_value(misses)
                ),
                p99 <= delay + 1000.0 && most <= 1.0 && misses == 0.0,
            )
        }),
    ));
    out
}

pub fn render_targets(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | met |\n|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", t.name, t.measured);
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The fan-out workload's plot: [`latency_cdf_svg`] of its latencies per backend.
pub fn fanout_svg(series: &[(String, Vec<f64>)]) -> String {
    latency_cdf_svg(
        "Fan-out latency: acknowledged write → subscriber sees it (CDF)",
        series,
    )
}

/// Cumulative distribution of latencies (ms) per series on a log time axis, titled `title`.
pub fn latency_cdf_svg(title: &str, series: &[(String, Vec<f64>)]) -> String {
    let (w, h) = (760.0, 440.0);
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let floor = 0.1_f64;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0_f64, f64::max);
    let (lo, hi) = (floor.log10().floor(), max.max(floor * 10.0).log10().ceil());
    let x = |v: f64| left + (v.max(floor).log10() - lo) / (hi - lo) * pw;
    let y = |q: f64| top + (1.0 - q) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        xml_escape(title)
    );
    let mut d = lo as i32;
    while d as f64 <= hi {
        let v = 10f64.powi(d);
        let px = x(v);
        let text = if v >= 1000.0 {
            format!("{} s", v / 1000.0)
        } else {
            format!("{v} ms")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{text}</text>"##,
            top + ph,
            top + ph + 18.0
        );
        d += 1;
    }
    for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let py = y(q);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{q}</text>"##,
            left + pw,
            left - 6.0,
            py + 4.0
        );
    }
    // p99 as a dashed line, labelled on the right so it does not collide with the "1" tick.
    let p99y = y(0.99);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{p99y:.1}" x2="{:.1}" y2="{p99y:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#999" text-anchor="end">p99</text>"##,
        left + pw,
        left + pw - 4.0,
        p99y + 12.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">fraction of deliveries</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut v = values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let ly = top + 20.0 + i as f64 * 40.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            xml_escape(name)
        );
        if v.is_empty() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" fill="{color}">no deliveries</text>"#,
                lx + 26.0,
                ly + 18.0
            );
            continue;
        }
        let p50 = percentile(&v, 50.0).unwrap_or(0.0);
        let p99 = percentile(&v, 99.0).unwrap_or(0.0);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555">p50 {} · p99 {} ms</text>"##,
            lx + 26.0,
            ly + 18.0,
            format_value(p50),
            format_value(p99)
        );
        let n = v.len();
        let step = (n / 600).max(1);
        let mut pts = format!("{:.1},{:.1}", x(v[0]), y(0.0));
        for (k, val) in v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k == n - 1)
        {
            let _ = write!(pts, " {:.1},{:.1}", x(*val), y((k + 1) as f64 / n as f64));
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
    }
    s.push_str("</svg>\n");
    s
}

pub const BEGIN: &str =
    "<!-- bench:results:begin (generated by `cargo run -p bench`; edit outside these markers) -->";
pub const END: &str = "<!-- bench:results:end -->";
pub const HEADING: &str = "## Side by side with etcd and ZooKeeper (`bench/`)";

/// Replaces the generated part of BENCHMARKS.md (between the markers) and keeps everything
/// else, including other sections; appends a new section when the markers are absent.
pub fn splice_section(existing: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", generated.trim_end());
    if let (Some(b), Some(e)) = (existing.find(BEGIN), existing.find(END)) {
        if b < e {
            return format!("{}{}{}", &existing[..b], block, &existing[e + END.len()..]);
        }
    }
    let mut out = existing.trim_end().to_string();
    if out.is_empty() {
        out.push_str("# Benchmarks\n");
    }
    let _ = write!(out, "\n\n{HEADING}\n\n{block}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(backend: &str, workload: &str, m: &[(&str, f64)]) -> Record {
        let mut r = Record::new(backend, workload);
        for (k, v) in m {
            r.metric(k, *v);
        }
        r
    }

    #[test]
    fn table_has_a_column_per_backend_and_dashes_for_gaps() {
        let rs = vec![
            rec(
                "registry",
                "register",
                &[("regs_per_s", 12345.6), ("p50_ms", 1.234)],
            ),
            rec("etcd", "register", &[("regs_per_s", 2000.0)]),
            Record::failed("zookeeper", "register", "boom".into()),
        ];
        let t = render_table(&rs, &["registry", "etcd", "zookeeper"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| workload | metric | registry | etcd | zookeeper |"
        );
        assert_eq!(
            lines[2],
            "| register | registrations/s | 12346 | 2000 | failed |"
        );
        assert_eq!(lines[3], "| register | p50 ms | 1.23 | – | failed |");
        assert!(render_notes(&rs).contains("zookeeper / register: **failed**: boom"));
    }

    #[test]
    fn values_are_rounded_by_magnitude() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.456), "0.46");
        assert_eq!(format_value(45.66), "45.7");
        assert_eq!(format_value(456.6), "457");
        assert_eq!(format_value(f64::NAN), "–");
    }

    #[test]
    fn targets_compare_ratios_and_limits() {
        let rs = vec![
            rec("registry", "register", &[("regs_per_s", 9000.0)]),
            rec("etcd", "register", &[("regs_per_s", 2000.0)]),
            rec("zookeeper", "register", &[("regs_per_s", 2000.0)]),
            rec("registry", "fanout", &[("p99_ms", 240.0), ("misses", 0.0)]),
            rec(
                "registry",
                "scale-1000",
                &[("bytes_per_replica", 1500.0), ("registrations", 1000.0)],
            ),
        ];
        let t = check_targets(&rs, 200, 1000);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].met, Some(true), "{t:?}");
        assert!(t[0].measured.starts_with("4.50×"));
        assert_eq!(t[1].met, Some(false));
        assert_eq!(t[2].met, Some(true));
        assert_eq!(t[3].met, Some(false));
        let two = vec![
            rec(
                "registry",
                "fanout-1000",
                &[("p99_ms", 40.0), ("misses", 0.0)],
            ),
            rec(
                "registry",
                "fanout-10000",
                &[("p99_ms", 60.0), ("misses", 0.0)],
            ),
            rec("registry", "fanout-x", &[("p99_ms", 1.0), ("misses", 0.0)]),
        ];
        let t = check_targets(&two, 0, 1000);
        let fan: Vec<_> = t.iter().filter(|t| t.name.contains("fan-out")).collect();
        assert_eq!(fan.len(), 2, "{t:?}");
        assert!(fan[0].name.ends_with("(fanout-1000)") && fan[0].met == Some(true));
        assert!(fan[1].name.ends_with("(fanout-10000)") && fan[1].met == Some(false));
        let slow = vec![rec(
            "registry",
            "fanout",
            &[("p99_ms", 251.0), ("misses", 0.0)],
        )];
        assert_eq!(check_targets(&slow, 200, 1000)[2].met, Some(false));
        assert_eq!(check_targets(&slow, 200, 1000)[0].met, None);
    }

    #[test]
    fn push_targets_check_each_figure_and_say_what_did_not_run() {
        let rs = vec![
            rec("registry", "fanout-1000", &[("start_p99_ms", 40.0)]),
            rec("etcd", "fanout-1000", &[("start_p99_ms", 50.0)]),
            rec("registry", "fanout-10000", &[("start_p99_ms", 700.0)]),
            rec("etcd", "fanout-10000", &[("start_p99_ms", 600.0)]),
            rec(
                "registry",
                "mass-subscribe",
                &[
                    ("subscribers", 100000.0),
                    ("push_delay_ms", 0.0),
                    ("p99_ms", 900.0),
                    ("misses", 0.0),
                    ("rss_bytes_per_sub", 3000.0),
                ],
            ),
            rec(
                "registry",
                "bytes-per-change",
                &[("delta_push_bytes", 338.0), ("gzip_push_bytes", 13741.0)],
            ),
            rec("registry-cluster", "register", &[("regs_per_s", 9000.0)]),
            rec("etcd", "register", &[("regs_per_s", 5000.0)]),
            rec("registry", "scale-100000", &[("regs_per_s", 30000.0)]),
            rec(
                "registry",
                "scale-10000000",
                &[
                    ("regs_per_s", 26000.0),
                    ("bytes_per_reg", 499.0),
                    ("registrations", 1e7),
                ],
            ),
        ];
        let t = check_push_targets(&rs, 0, 10_000_000);
        let met: Vec<(&str, Option<bool>)> = t.iter().map(|t| (&t.name[..2], t.met)).collect();
        assert_eq!(
            met,
            vec![
                ("a.", Some(true)),
                ("a.", Some(false)),
                ("b.", Some(true)),
                ("b.", Some(false)),
                ("c.", Some(true)),
                ("d.", Some(false)),
                ("e.", Some(true)),
                ("f.", None),
            ],
            "{t:?}"
        );
        assert!(t[5].measured.starts_with("1.80×"), "{t:?}");
        // A fan-out at another push delay is not the delay-0 target; a slow 10 M run misses.
        let mut slow = rs.clone();
        slow.last_mut().unwrap().metrics[0].1 = 20000.0;
        let t = check_push_targets(&slow, 200, 10_000_000);
        assert_eq!(t[0].met, None);
        assert_eq!(t[0].measured, "not a delay-0 run");
        assert_eq!(t[6].met, Some(false), "{t:?}");
        // A churn run without its window count missed; a scale run below 10 M is n/a.
        let churn = vec![rec("registry", "mass-churn", &[("p99_ms", 240.0)])];
        let t = check_push_targets(&churn, 0, 1_000_000);
        assert_eq!(t.last().unwrap().met, Some(false));
        assert_eq!(t[t.len() - 2].met, None);
    }

    #[test]
    fn splice_keeps_other_sections_and_replaces_ours() {
        let first = splice_section("# Benchmarks\n\n## Standalone node\n\ntext\n", "table v1");
        assert!(first.contains("## Standalone node\n\ntext"));
        assert!(first.contains(HEADING));
        assert!(first.contains("table v1"));
        let with_notes = format!("{first}\n### Profile\nmine\n");
        let second = splice_section(&with_notes, "table v2");
        assert!(second.contains("table v2") && !second.contains("table v1"));
        assert!(
            second.contains("## Standalone node\n\ntext") && second.contains("### Profile\nmine")
        );
        assert_eq!(second.matches(HEADING).count(), 1);
        assert!(splice_section("", "x").starts_with("# Benchmarks\n"));
    }

    #[test]
    fn svg_has_one_curve_per_backend_with_data() {
        let svg = fanout_svg(&[
            ("registry".into(), vec![200.0, 210.0, 250.0]),
            ("etcd".into(), vec![]),
            ("zk <3".into(), vec![0.0, 3.0]),
        ]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("no deliveries") && svg.contains("zk &lt;3"));
        assert!(svg.contains("Fan-out latency"));
        let churn = latency_cdf_svg("Churn <change> → push", &[("registry".into(), vec![1.0])]);
        assert!(churn.contains("Churn &lt;change&gt; → push") && !churn.contains("Fan-out"));
        assert_eq!(churn.matches("<polyline").count(), 1);
    }
}
