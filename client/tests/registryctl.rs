//! The registryctl binary against real registry-node processes: every command, its output
//! formats, and its exit codes.

mod ctlkit;

use ctlkit::{ctl, ctl_with, Run, CTL};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::node::Node;
use testkit::{eventually, Process, Spawn, DEADLINE};

fn json(run: &Run) -> Value {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", run.stdout))
}

/// A long-running registryctl (publish, watch) whose stdout lines are read with a deadline;
/// its stderr is kept in a log, printed when the test fails.
struct Running(Process);

impl Running {
    fn start(args: &[&str]) -> Running {
        let process = Spawn::new("registryctl", CTL)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout_lines()
            .start()
            .expect("start registryctl");
        Running(process)
    }

    /// The next stdout line that is a JSON object satisfying `accept`.
    fn next_json(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .0
                .next_line(left)
                .unwrap_or_else(|| panic!("registryctl printed no line for: {what}"));
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if accept(&value) {
                    return value;
                }
            }
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        self.0.signal(signal);
    }

    /// Waits for the exit code within the deadline.
    fn wait(&mut self) -> i32 {
        self.0
            .wait_exit(DEADLINE)
            .expect("registryctl did not exit")
            .code()
            .unwrap_or(-1)
    }
}

fn free_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

fn publisher_ids(url: &str, data_id: &str) -> Vec<String> {
    let answer = json(&ctl(&["-o", "json", "--url", url, "get", data_id]));
    answer["publishers"]
        .as_array()
        .expect("publishers")
        .iter()
        .map(|p| p["registerId"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn help_is_everywhere() {
    for command in [
        vec![],
        vec!["publish"],
        vec!["unpublish"],
        vec!["subscribe"],
        vec!["watch"],
        vec!["get"],
        vec!["services"],
        vec!["cluster"],
        vec!["push"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let run = ctl(&args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("Usage: registryctl"),
            "{args:?}: {}",
            run.stdout
        );
    }
    assert!(ctl(&["--help"]).stdout.contains("Exit codes"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["get"],
        vec!["push", "sideways"],
        vec!["--output", "yaml", "services"],
        vec!["publish", "svc", "--ttl", "3"],
        vec!["--timeout", "soon", "services"],
        vec!["get", "svc", "--wait", "5s"],
    ] {
        let run = ctl(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty(), "{args:?}");
    }
    let run = ctl(&["--url", "ftp://somewhere", "services"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("scheme must be http or https"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_registry_exits_3() {
    let url = free_port_url();
    for args in [
        vec!["services"],
        vec!["get", "svc"],
        vec!["cluster"],
        vec!["push", "off"],
    ] {
        let mut full = vec!["--url", url.as_str(), "--timeout", "3s"];
        full.extend(args.iter());
        let run = ctl(&full);
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("cannot reach"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = ctl_with(
        &["--timeout", "3s", "publish", "svc", "x"],
        &[("REGISTRY_URL", &url)],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("publish failed"), "{}", run.stderr);
}

#[test]
fn publish_get_watch_unpublish_end_to_end() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut publish = Running::start(&[
        "-o",
        "json",
        "--url",
        &url,
        "publish",
        "svc.cli",
        "10.0.0.1:80",
        "10.0.0.2:80",
        "--ttl",
        "5",
        "--client-id",
        "cli-test",
    ]);
    let published = publish.next_json("published", |v| v["event"] == "published");
    let register_id = published["registerId"].as_str().unwrap().to_owned();
    let session_id = published["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(published["version"], 1);
    assert_eq!(published["url"], url.as_str());
    assert_eq!(
        published["dataInfoId"],
        "svc.cli#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
    );

    let data = json(&ctl(&["-o", "json", "--url", &url, "get", "svc.cli"]));
    assert_eq!(data["publishers"][0]["registerId"], register_id.as_str());
    assert_eq!(
        data["zones"]["DEFAULT_ZONE"],
        serde_json::json!(["10.0.0.1:80", "10.0.0.2:80"])
    );
    let table = ctl(&["--url", &url, "get", "svc.cli"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("REGISTER ID"), "{}", table.stdout);
    assert!(table.stdout.contains(&register_id), "{}", table.stdout);
    assert!(
        table.stdout.contains("10.0.0.1:80,10.0.0.2:80"),
        "{}",
        table.stdout
    );

    let services = json(&ctl(&["-o", "json", "--url", &url, "services"]));
    let row = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["dataId"] == "svc.cli")
        .expect("svc.cli listed");
    assert_eq!(row["publisherCount"], 1);
    let none = json(&ctl(&[
        "-o", "json", "--url", &url, "services", "--prefix", "no.such.",
    ]));
    assert_eq!(none["services"], serde_json::json!([]));
    let table = ctl(&["--url", &url, "services"]);
    assert!(table.stdout.starts_with("DATA ID"), "{}", table.stdout);
    assert!(table.stdout.contains("svc.cli"), "{}", table.stdout);

    let cluster = json(&ctl(&["-o", "json", "--url", &url, "cluster"]));
    assert!(cluster.is_object(), "{cluster}");
    let table = ctl(&["--url", &url, "cluster"]);
    assert_eq!(table.code, 0);
    assert!(table.stdout.starts_with("FIELD"), "{}", table.stdout);

    let watch = ctl(&[
        "-o", "json", "--url", &url, "watch", "svc.cli", "--count", "1",
    ]);
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    let lines: Vec<Value> = watch
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "session", "{}", watch.stdout);
    let snapshot = lines
        .iter()
        .find(|l| l.get("zones").is_some())
        .expect("a snapshot line");
    assert_eq!(
        snapshot["zones"]["DEFAULT_ZONE"],
        serde_json::json!(["10.0.0.1:80", "10.0.0.2:80"])
    );
    let table = ctl(&["--url", &url, "subscribe", "svc.cli", "--count", "1"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains("svc.cli#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP version="),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("  DEFAULT_ZONE  10.0.0.2:80"),
        "{}",
        table.stdout
    );

    let run = ctl(&["--url", &url, "unpublish", &session_id, &register_id]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(publisher_ids(&url, "svc.cli").is_empty());
    let again = ctl(&["--url", &url, "unpublish", &session_id, &register_id]);
    assert_eq!(again.code, 4, "{}", again.stderr);
    assert!(again.stderr.contains("not_found"), "{}", again.stderr);
    let unknown = ctl(&["--url", &url, "unpublish", "no-such-session", "x"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);

    publish.signal(nix::sys::signal::Signal::SIGINT);
    publish.next_json("closed", |v| v["event"] == "closed");
    assert_eq!(publish.wait(), 0);
}

#[test]
fn publish_holds_until_sigterm_and_then_removes_its_data() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut publish = Running::start(&[
        "-o",
        "json",
        "--url",
        &url,
        "publish",
        "svc.held",
        "h:1",
        "--register-id",
        "held-1",
    ]);
    publish.next_json("published", |v| v["event"] == "published");
    assert_eq!(publisher_ids(&url, "svc.held"), vec!["held-1"]);
    publish.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(publish.wait(), 0);
    // The session was deleted on the way out: gone without waiting for the 30 s TTL.
    assert!(publisher_ids(&url, "svc.held").is_empty());
}

#[test]
fn publish_reregisters_after_its_session_is_dropped() {
    let node = Node::start(&[]);
    let url = node.url();
    let publish = Running::start(&[
        "-o",
        "json",
        "--url",
        &url,
        "publish",
        "svc.again",
        "a:1",
        "--register-id",
        "again-1",
        "--ttl",
        "5",
    ]);
    let published = publish.next_json("published", |v| v["event"] == "published");
    let old_session = published["sessionId"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api =
        registry_client::NodeApi::new(reqwest::Client::new(), &url, &Default::default()).unwrap();
    runtime
        .block_on(api.delete_session(&old_session))
        .expect("delete the session");
    let session = publish.next_json("new session", |v| v["event"] == "session");
    assert_ne!(session["sessionId"], old_session.as_str());
    runtime.block_on(eventually("publisher re-registered", DEADLINE, || {
        let url = url.clone();
        async move {
            let ids = tokio::task::spawn_blocking(move || publisher_ids(&url, "svc.again"))
                .await
                .ok()?;
            (ids == ["again-1"]).then_some(())
        }
    }));
}

#[test]
fn rejected_requests_exit_1_with_the_reason() {
    let node = Node::start(&["--token", "t0ken"]);
    let url = node.url();
    let run = ctl(&["--url", &url, "services"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("unauthorized"), "{}", run.stderr);
    let run = ctl_with(&["--url", &url, "services"], &[("REGISTRY_TOKEN", "t0ken")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = ctl(&["--url", &url, "--token", "t0ken", "publish", "", "x"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid_argument") && run.stderr.contains("dataId"),
        "{}",
        run.stderr
    );
    let long_id = "r".repeat(200);
    let run = ctl(&[
        "--url",
        &url,
        "--token",
        "t0ken",
        "publish",
        "svc",
        "x",
        "--register-id",
        &long_id,
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("registerId"), "{}", run.stderr);
    let run = ctl(&["--url", &url, "--token", "wrong", "get", "svc"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("unauthorized"), "{}", run.stderr);
}

#[test]
fn push_switch_is_set_on_every_node() {
    let first = Node::start(&[]);
    let second = Node::start(&[]);
    let (a, b) = (first.url(), second.url());
    let run = ctl(&["--url", &a, "--url", &b, "push", "off"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("pushes STOPPED").count(),
        2,
        "{}",
        run.stdout
    );
    for url in [&a, &b] {
        let status = json(&ctl(&["-o", "json", "--url", url, "push", "status"]));
        assert_eq!(status["stopPush"], true, "{url}: {status}");
    }
    let run = ctl(&["-o", "json", "--url", &a, "push", "on"]);
    let line: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(line["stopPush"], false);
    assert_eq!(
        json(&ctl(&["-o", "json", "--url", &a, "push", "status"]))["stopPush"],
        false
    );
    assert_eq!(
        json(&ctl(&["-o", "json", "--url", &b, "push", "status"]))["stopPush"],
        true
    );
    let table = ctl(&["--url", &b, "push", "status"]);
    assert!(
        table.stdout.starts_with("pushes STOPPED"),
        "{}",
        table.stdout
    );

    // One node down: the others are set, and the exit code says it was not everywhere.
    let down = free_port_url();
    let run = ctl(&["--url", &b, "--url", &down, "--timeout", "3s", "push", "on"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("not set on 1 of 2 nodes"),
        "{}",
        run.stderr
    );
    assert_eq!(
        json(&ctl(&["-o", "json", "--url", &b, "push", "status"]))["stopPush"],
        false
    );
}

#[test]
fn blocking_get_answers_on_change() {
    let node = Node::start(&[]);
    let url = node.url();
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let run = ctl(&[
                "-o",
                "json",
                "--url",
                &url,
                "get",
                "svc.block",
                "--wait-index",
                "0",
                "--wait",
                "60s",
            ]);
            (run, started.elapsed())
        })
    };
    let _publish = Running::start(&["-o", "json", "--url", &url, "publish", "svc.block", "b:1"]);
    let (run, took) = waiting.join().unwrap();
    let answer = json(&run);
    assert_eq!(answer["zones"]["DEFAULT_ZONE"], serde_json::json!(["b:1"]));
    assert!(took < Duration::from_secs(45), "{took:?}");
}

#[test]
fn watch_follows_a_failover() {
    let mut first = Node::start(&[]);
    let second = Node::start(&[]);
    let (a, b) = (first.url(), second.url());
    let watch = Running::start(&[
        "-o",
        "json",
        "--url",
        &a,
        "--url",
        &b,
        "watch",
        "svc.moving",
        "--ttl",
        "5",
    ]);
    let session = watch.next_json("first session", |v| v["event"] == "session");
    assert_eq!(session["url"], a.as_str());
    watch.next_json("first snapshot", |v| v.get("zones").is_some());
    first.kill();
    let session = watch.next_json("session on the second node", |v| v["event"] == "session");
    assert_eq!(session["url"], b.as_str());
    let _publish = Running::start(&["-o", "json", "--url", &b, "publish", "svc.moving", "m:1"]);
    watch.next_json("push from the second node", |v| {
        v["zones"]["DEFAULT_ZONE"] == serde_json::json!(["m:1"])
    });
}

#[test]
fn publish_exits_1_when_the_registry_refuses_to_take_it_back() {
    // After failover the second node refuses the registerId (another session holds it):
    // nothing is left to hold the session for, so publish ends with "refused".
    let mut first = Node::start(&[]);
    let second = Node::start(&[]);
    let (a, b) = (first.url(), second.url());
    let mut publish = Running::start(&[
        "-o",
        "json",
        "--url",
        &a,
        "--url",
        &b,
        "publish",
        "svc.taken",
        "mine:1",
        "--register-id",
        "taken-1",
        "--ttl",
        "5",
    ]);
    let published = publish.next_json("published", |v| v["event"] == "published");
    assert_eq!(published["url"], a.as_str());
    let thief = Running::start(&[
        "-o",
        "json",
        "--url",
        &b,
        "publish",
        "svc.taken",
        "theirs:1",
        "--register-id",
        "taken-1",
    ]);
    thief.next_json("the other publisher", |v| v["event"] == "published");
    first.kill();
    assert_eq!(publish.wait(), 1);
    assert_eq!(publisher_ids(&b, "svc.taken"), ["taken-1"]);
}

#[test]
fn watch_into_a_closed_pipe_exits_quietly() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut child = ctlkit::command(&["-o", "json", "--url", &url, "watch", "svc.pipe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start registryctl");
    {
        // Like `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("\"session\""), "{first}");
    }
    let _publish = Running::start(&["-o", "json", "--url", &url, "publish", "svc.pipe", "p:1"]);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "watch did not notice the closed pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn subscribe_with_delta_prints_the_same_full_lists() {
    let node = Node::start(&[]);
    let url = node.url();
    // Enough items that a change of a few is smaller as a delta than as the whole list.
    let many: Vec<String> = (1..=30).map(|i| format!("10.0.0.{i}:80")).collect();
    let mut args = vec!["-o", "json", "--url", &url, "publish", "svc.ctl.delta"];
    args.extend(many.iter().map(String::as_str));
    let mut first = Running::start(&args);
    first.next_json("published", |v| v["event"] == "published");
    let mut watch = Running::start(&[
        "-o",
        "json",
        "--url",
        &url,
        "subscribe",
        "svc.ctl.delta",
        "--delta",
    ]);
    let sorted = |v: &Value| {
        let mut items: Vec<String> = v["zones"]["DEFAULT_ZONE"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        items.sort();
        items
    };
    let shown = watch.next_json("the first snapshot", |v| v.get("zones").is_some());
    assert_eq!(shown["zones"], serde_json::json!({ "DEFAULT_ZONE": many }));
    // A second publisher: the node sends a delta, the output is the whole list.
    let mut second = Running::start(&[
        "-o",
        "json",
        "--url",
        &url,
        "publish",
        "svc.ctl.delta",
        "10.0.0.99:80",
        "10.0.0.1:80",
    ]);
    second.next_json("published", |v| v["event"] == "published");
    let shown = watch.next_json("32 items", |v| sorted(v).len() == 32);
    let mut want = many.clone();
    want.extend(["10.0.0.99:80".to_owned(), "10.0.0.1:80".to_owned()]);
    want.sort();
    assert_eq!(sorted(&shown), want);
    second.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(second.wait(), 0);
    let shown = watch.next_json("30 items", |v| sorted(v).len() == 30);
    let mut want = many.clone();
    want.sort();
    assert_eq!(sorted(&shown), want);
    // Those changes went out as deltas (GET /metrics, plain HTTP/1.0).
    let mut conn = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut metrics = String::new();
    std::io::Read::read_to_string(&mut conn, &mut metrics).unwrap();
    let deltas: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("registry_delta_pushes_sent_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the delta push counter");
    assert!(deltas >= 2, "{deltas} deltas");
    watch.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(watch.wait(), 0);
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(first.wait(), 0);
}
