//! registryctl: look at and poke a registry through its public HTTP API.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use registry_client::{
    ClientConfig, ConnectionState, Endpoints, Error, ErrorCode, Interest, Publication,
    RegistryClient, Scope, ServiceId, Snapshot,
};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

/// Writes to stdout; a closed pipe (`registryctl watch x | head -1`) ends the program
/// quietly with success instead of a panic, as command-line tools do.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("registryctl: cannot write the output: {err}");
        std::process::exit(1);
    }
}

macro_rules! out {
    ($($arg:tt)*) => { emit(&format!($($arg)*)) };
}

macro_rules! outln {
    ($($arg:tt)*) => { emit(&format!("{}\n", format_args!($($arg)*))) };
}

const EXIT_HELP: &str = "\
Exit codes:
  0  success (also after Ctrl-C/SIGTERM for publish and watch)
  1  the registry refused the request (bad argument, unauthorized, conflict, ...)
  2  usage error (bad command line)
  3  no registry node could be reached or served the request in time
  4  not found (unknown session or registerId)";

#[derive(Parser, Debug)]
#[command(name = "registryctl", version, about = "Look at and change a service registry through its HTTP API", after_help = EXIT_HELP)]
struct Cli {
    /// Session-node URL; repeat (or comma-separate in REGISTRY_URL) to give several for failover.
    #[arg(
        long = "url",
        short = 'u',
        env = "REGISTRY_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9603",
        global = true
    )]
    urls: Vec<String>,

    /// Bearer token, when the registry requires one.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// File holding the bearer token, read again when it changes (e.g. a projected
    /// ServiceAccount token: /var/run/secrets/tokens/registry-token). Exclusive with --token.
    #[arg(
        long,
        env = "REGISTRY_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,

    /// PEM CA certificates that `https://` URLs are verified against (the registry's own CA,
    /// instead of the built-in web roots).
    #[arg(long, env = "REGISTRY_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    /// Limit of each HTTP request (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish data and keep it published (session kept alive, failed over) until Ctrl-C.
    ///
    /// Exits 1 if, after a session loss or failover, a node refuses for good to take the
    /// publisher back (e.g. another session holds its registerId).
    Publish(PublishArgs),
    /// Remove one publisher of a session (ids as `publish` prints them). A client that still
    /// holds the publisher registers it again if it ever has to open a new session.
    Unpublish(UnpublishArgs),
    /// Subscribe and print every push until Ctrl-C (or --count pushes).
    ///
    /// Exits 1 if, after a session loss or failover, a node refuses for good to take the
    /// subscriber back.
    #[command(alias = "watch")]
    Subscribe(SubscribeArgs),
    /// Show a service's publishers and data (optionally as a blocking query).
    Get(GetArgs),
    /// List services.
    Services(ServicesArgs),
    /// Show the node's view of the cluster.
    Cluster,
    /// The stop-push switch: `off` pauses all pushes, `on` resumes them (sent to every --url).
    Push(PushArgs),
}

#[derive(Args, Debug)]
struct ServiceArgs {
    /// The service's dataId.
    data_id: String,
    /// Group (default DEFAULT_GROUP).
    #[arg(long, short = 'g')]
    group: Option<String>,
    /// Instance id (default DEFAULT_INSTANCE_ID).
    #[arg(long)]
    instance_id: Option<String>,
}

impl ServiceArgs {
    fn service(&self) -> ServiceId {
        ServiceId {
            data_id: self.data_id.clone(),
            group: self.group.clone(),
            instance_id: self.instance_id.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct SessionArgs {
    /// Session TTL in seconds (5..600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=600))]
    ttl: u64,
    /// clientId of the session.
    #[arg(long)]
    client_id: Option<String>,
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The data items to publish (addresses, URLs, ...).
    data: Vec<String>,
    /// The publisher's zone (default DEFAULT_ZONE).
    #[arg(long)]
    zone: Option<String>,
    /// Use this registerId (makes a re-run replace the same publisher).
    #[arg(long)]
    register_id: Option<String>,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Args, Debug)]
struct UnpublishArgs {
    /// The session that holds the publisher.
    session_id: String,
    /// The publisher's registerId.
    register_id: String,
}

#[derive(Args, Debug)]
struct SubscribeArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The subscriber's zone (default DEFAULT_ZONE).
    #[arg(long)]
    zone: Option<String>,
    /// Which publishers to see.
    #[arg(long, value_enum, default_value_t = ScopeArg::DataCenter)]
    scope: ScopeArg,
    /// Exit after this many pushes.
    #[arg(long)]
    count: Option<u64>,
    /// Ask for delta pushes (only what changed after a first full push); the output is
    /// the same full lists.
    #[arg(long)]
    delta: bool,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ScopeArg {
    Zone,
    #[value(name = "dataCenter", alias = "datacenter", alias = "data-center")]
    DataCenter,
    Global,
}

impl From<ScopeArg> for Scope {
    fn from(scope: ScopeArg) -> Scope {
        match scope {
            ScopeArg::Zone => Scope::Zone,
            ScopeArg::DataCenter => Scope::DataCenter,
            ScopeArg::Global => Scope::Global,
        }
    }
}

#[derive(Args, Debug)]
struct GetArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Blocking query: answer once the version exceeds this index (or at the end of --wait).
    #[arg(long)]
    wait_index: Option<u64>,
    /// How long a blocking query may wait (max 300s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, requires = "wait_index")]
    wait: Duration,
}

#[derive(Args, Debug)]
struct ServicesArgs {
    /// Only services whose dataInfoId starts with this.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many services.
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Args, Debug)]
struct PushArgs {
    #[arg(value_enum)]
    action: PushAction,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum PushAction {
    /// Resume pushes (stopPush=false).
    On,
    /// Pause all pushes (stopPush=true).
    Off,
    /// Show the switch.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("registryctl: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("registryctl: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(err) = err.chain().find_map(|cause| cause.downcast_ref::<Error>()) else {
        return 1;
    };
    match err {
        Error::Config(_) => 2,
        Error::Transport { .. }
        | Error::Timeout { .. }
        | Error::NoNodeReachable { .. }
        | Error::OperationTimeout { .. } => 3,
        Error::Api {
            code: ErrorCode::Unavailable,
            ..
        } => 3,
        Error::Api {
            code: ErrorCode::NotFound,
            ..
        }
        | Error::NotHeld { .. } => 4,
        _ => 1,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(cli.urls.iter().cloned()).request_timeout(cli.timeout);
    config.token = cli.token.clone();
    config.token_file = cli.token_file.clone();
    config.ca_file = cli.ca_file.clone();
    let endpoints = || Endpoints::new(&config.urls, &config.http_settings());
    match &cli.command {
        Command::Publish(args) => publish(&cli, config.clone(), args).await,
        Command::Unpublish(args) => unpublish(&cli, &endpoints()?, args).await,
        Command::Subscribe(args) => subscribe(&cli, config.clone(), args).await,
        Command::Get(args) => {
            let wait = args.wait_index.map(|index| (index, args.wait));
            let answer = endpoints()?.data(&args.service.service(), wait).await?;
            match cli.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    outln!("dataInfoId: {}", answer.data_info_id);
                    outln!("version:    {}", answer.version);
                    let rows = answer
                        .publishers
                        .iter()
                        .map(|p| {
                            vec![
                                p.register_id.clone(),
                                p.zone.clone(),
                                p.version.to_string(),
                                p.client_id.clone().unwrap_or_default(),
                                p.data.join(","),
                            ]
                        })
                        .collect();
                    out!(
                        "{}",
                        table(&["REGISTER ID", "ZONE", "VERSION", "CLIENT", "DATA"], rows)
                    );
                }
            }
            Ok(())
        }
        Command::Services(args) => {
            let answer = endpoints()?
                .services(args.prefix.as_deref(), args.limit)
                .await?;
            match cli.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    let rows = answer
                        .services
                        .iter()
                        .map(|s| {
                            vec![
                                s.data_id.clone(),
                                s.group.clone(),
                                s.instance_id.clone(),
                                s.publisher_count.to_string(),
                                s.subscriber_count
                                    .map(|n| n.to_string())
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    out!(
                        "{}",
                        table(
                            &[
                                "DATA ID",
                                "GROUP",
                                "INSTANCE ID",
                                "PUBLISHERS",
                                "SUBSCRIBERS"
                            ],
                            rows
                        )
                    );
                }
            }
            Ok(())
        }
        Command::Cluster => {
            let answer = endpoints()?.cluster().await?;
            match cli.output {
                Output::Json => print_json(&answer),
                Output::Table => match answer.as_object() {
                    Some(fields) => {
                        let rows = fields
                            .iter()
                            .map(|(key, value)| vec![key.clone(), plain(value)])
                            .collect();
                        out!("{}", table(&["FIELD", "VALUE"], rows));
                    }
                    None => outln!("{}", plain(&answer)),
                },
            }
            Ok(())
        }
        Command::Push(args) => push(&cli, &endpoints()?, args.action).await,
    }
}

/// Prints session changes so that a user (or a script) sees failovers as they happen.
fn report_connection(output: Output, state: &ConnectionState) {
    match (output, state) {
        (Output::Json, ConnectionState::Connected { url, session_id }) => print_json(
            &serde_json::json!({"event": "session", "url": url, "sessionId": session_id}),
        ),
        (Output::Json, ConnectionState::Connecting) => {
            print_json(&serde_json::json!({"event": "reconnecting"}))
        }
        (Output::Table, ConnectionState::Connected { url, session_id }) => {
            eprintln!("session {session_id} open on {url}")
        }
        (Output::Table, ConnectionState::Connecting) => eprintln!("session lost, reconnecting..."),
        (_, ConnectionState::Closed) => {}
    }
}

fn session_config(mut config: ClientConfig, session: &SessionArgs) -> ClientConfig {
    config.session_ttl = Duration::from_secs(session.ttl);
    config.client_id = session.client_id.clone();
    config.operation_timeout = config.request_timeout * 3;
    config
}

async fn publish(cli: &Cli, config: ClientConfig, args: &PublishArgs) -> anyhow::Result<()> {
    let client = RegistryClient::new(session_config(config, &args.session))?;
    let mut publication = Publication::new(args.service.service(), args.data.iter().cloned());
    publication.zone = args.zone.clone();
    publication.register_id = args.register_id.clone();
    let publisher = match client.publish(publication).await {
        Ok(publisher) => publisher,
        Err(err) => {
            client.close().await;
            return Err(err).context("publish failed");
        }
    };
    let (url, session_id) = client.session().unwrap_or_default();
    let published = publisher.last_published();
    match cli.output {
        Output::Json => print_json(&serde_json::json!({
            "event": "published",
            "url": url,
            "sessionId": session_id,
            "registerId": published.register_id,
            "dataInfoId": published.data_info_id,
            "version": published.version,
        })),
        Output::Table => {
            outln!(
                "published {} registerId={} version={} session={} on {}",
                published.data_info_id,
                published.register_id,
                published.version,
                session_id,
                url
            );
            eprintln!("keeping it published; Ctrl-C to remove it and exit");
        }
    }
    let mut connection = client.connection();
    connection.borrow_and_update();
    let mut registration = publisher.watch_registration();
    let outcome = hold_until_signal(async {
        loop {
            tokio::select! {
                changed = connection.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let state = connection.borrow_and_update().clone();
                    report_connection(cli.output, &state);
                }
                refused = registration.wait_for(|state| state.refusal().is_some()) => {
                    // Without the publisher there is nothing left to hold the session for.
                    let Ok(state) = refused else { return Ok(()) };
                    let err = state.refusal().cloned().unwrap_or(Error::Closed);
                    return Err(anyhow::Error::new(err)
                        .context("the registry refused to take the publisher back after the session was lost"));
                }
            }
        }
    })
    .await;
    client.close().await;
    if cli.output == Output::Json {
        print_json(&serde_json::json!({"event": "closed"}));
    }
    outcome
}

async fn subscribe(cli: &Cli, config: ClientConfig, args: &SubscribeArgs) -> anyhow::Result<()> {
    let client = RegistryClient::new(session_config(config, &args.session))?;
    let mut interest = Interest::new(args.service.service())
        .scope(args.scope.into())
        .delta(args.delta);
    interest.zone = args.zone.clone();
    let mut subscription = match client.subscribe(interest).await {
        Ok(subscription) => subscription,
        Err(err) => {
            client.close().await;
            return Err(err).context("subscribe failed");
        }
    };
    if let Some((url, session_id)) = client.session() {
        report_connection(cli.output, &ConnectionState::Connected { url, session_id });
    }
    let mut connection = client.connection();
    connection.borrow_and_update();
    let limit = args.count;
    let outcome = hold_until_signal(async {
        let mut seen = 0u64;
        loop {
            tokio::select! {
                snapshot = subscription.next() => {
                    let Some(snapshot) = snapshot else {
                        return match subscription.registration().refusal() {
                            Some(err) => Err(anyhow::Error::new(err.clone()).context(
                                "the registry refused to take the subscriber back after the session was lost",
                            )),
                            None => Ok(()),
                        };
                    };
                    print_snapshot(cli.output, &snapshot);
                    seen += 1;
                    if limit.is_some_and(|limit| seen >= limit) {
                        return Ok(());
                    }
                }
                changed = connection.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let state = connection.borrow_and_update().clone();
                    report_connection(cli.output, &state);
                }
            }
        }
    })
    .await;
    drop(subscription);
    client.close().await;
    outcome
}

/// Runs `work` until it ends or until Ctrl-C / SIGTERM.
async fn hold_until_signal(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        outcome = work => outcome?,
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn print_snapshot(output: Output, snapshot: &Snapshot) {
    match output {
        Output::Json => print_json(snapshot),
        Output::Table => {
            let items = snapshot.zones.values().map(Vec::len).sum::<usize>();
            outln!(
                "{} version={} items={}",
                snapshot.data_info_id,
                snapshot.version,
                items
            );
            for (zone, data) in &snapshot.zones {
                for item in data {
                    outln!("  {zone}  {item}");
                }
            }
        }
    }
}

async fn unpublish(cli: &Cli, endpoints: &Endpoints, args: &UnpublishArgs) -> anyhow::Result<()> {
    // A session lives on one session node: ask each until one knows it.
    let mut last = None;
    for node in endpoints.nodes() {
        match node.unpublish(&args.session_id, &args.register_id).await {
            Ok(()) => {
                match cli.output {
                    Output::Json => print_json(&serde_json::json!({
                        "event": "unpublished", "url": node.url(),
                        "sessionId": args.session_id, "registerId": args.register_id,
                    })),
                    Output::Table => outln!(
                        "unpublished {} of session {}",
                        args.register_id,
                        args.session_id
                    ),
                }
                return Ok(());
            }
            Err(err) => last = Some(err),
        }
    }
    let err = last.unwrap_or_else(|| Error::Config("no node URL".into()));
    Err(err).context(format!(
        "cannot unpublish {} of session {}",
        args.register_id, args.session_id
    ))
}

async fn push(cli: &Cli, endpoints: &Endpoints, action: PushAction) -> anyhow::Result<()> {
    if action == PushAction::Status {
        let switch = endpoints.push_switch().await?;
        match cli.output {
            Output::Json => print_json(&switch),
            Output::Table => outln!(
                "{}",
                describe_switch(switch.stop_push, switch.push_delay_millis)
            ),
        }
        return Ok(());
    }
    // Every session node pushes on its own, so the switch is set on every node given.
    let stop_push = action == PushAction::Off;
    let mut failures = Vec::new();
    let mut first_error = None;
    for node in endpoints.nodes() {
        match node.set_stop_push(stop_push).await {
            Ok(switch) => match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "url": node.url(), "stopPush": switch.stop_push, "pushDelayMillis": switch.push_delay_millis,
                })),
                Output::Table => outln!(
                    "{}: {}",
                    node.url(),
                    describe_switch(switch.stop_push, switch.push_delay_millis)
                ),
            },
            Err(err) => {
                failures.push(format!("{}: {err}", node.url()));
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(err) => Err(err).context(format!(
            "the switch was not set on {} of {} nodes ({})",
            failures.len(),
            endpoints.nodes().len(),
            failures.join("; ")
        )),
    }
}

fn describe_switch(stop_push: bool, delay: Option<u64>) -> String {
    let state = if stop_push {
        "pushes STOPPED"
    } else {
        "pushes on"
    };
    match delay {
        Some(delay) => format!("{state} (push delay {delay} ms)"),
        None => state.to_owned(),
    }
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => outln!("{text}"),
        Err(err) => eprintln!("registryctl: cannot encode the output: {err}"),
    }
}

/// A JSON value as a table cell: strings bare, the rest compact JSON.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows.iter()) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths
                    .get(index)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["A", "LONG"],
            vec![vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(text, "A    LONG\nxyz  1\nq\n");
    }

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let api = |status, code| {
            anyhow::Error::new(Error::Api {
                url: "u".into(),
                status,
                code,
                message: "m".into(),
            })
        };
        assert_eq!(exit_code(&api(400, ErrorCode::InvalidArgument)), 1);
        assert_eq!(exit_code(&api(409, ErrorCode::Conflict)), 1);
        assert_eq!(
            exit_code(&api(404, ErrorCode::NotFound).context("while x")),
            4
        );
        assert_eq!(exit_code(&api(503, ErrorCode::Unavailable)), 3);
        assert_eq!(
            exit_code(&anyhow::Error::new(Error::Config("bad".into()))),
            2
        );
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
    }
}
