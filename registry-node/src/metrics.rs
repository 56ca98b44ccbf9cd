//! Prometheus metrics of a node: HTTP requests per route, sessions, publishers, subscribers, pushes.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// Why a public-API request was refused (`access::audit::Reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// A route template as a `&'static str`, so that recording a request allocates nothing.
/// Templates come from the router's fixed route table, so the leaked set is bounded by it.
pub fn static_route(route: &str) -> &'static str {
    static ROUTES: std::sync::OnceLock<
        parking_lot::RwLock<std::collections::HashSet<&'static str>>,
    > = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(r) = routes.read().get(route) {
        return r;
    }
    let mut w = routes.write();
    if let Some(r) = w.get(route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    w.insert(leaked);
    leaked
}

/// An HTTP method as a `&'static str`; methods outside the standard set are "other".
pub fn static_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[derive(Clone)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 0.1 ms .. ~13 s
        Histogram::new(exponential_buckets(0.0001, 2.0, 18))
    }
}

/// Every metric the node exports. The registry is filled once at start-up; other layers
/// register theirs through [`Metrics::register`] before the node starts serving.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_seconds: Family<RouteLabels, Histogram, LatencyBuckets>,
    pub sessions: Gauge,
    pub publishers: Gauge,
    pub subscribers: Gauge,
    pub open_streams: Gauge,
    pub blocking_queries: Gauge,
    pub pushes_sent: Counter,
    pub delta_pushes_sent: Counter,
    pub pushes_failed: Counter,
    pub push_fetches: Counter,
    pub push_renders: Counter,
    pub publish_to_push_seconds: Histogram,
    pub access_denied: Family<DenialLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("registry");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            http_requests: Family::default(),
            http_request_seconds: Family::new_with_constructor(LatencyBuckets),
            sessions: Gauge::default(),
            publishers: Gauge::default(),
            subscribers: Gauge::default(),
            open_streams: Gauge::default(),
            blocking_queries: Gauge::default(),
            pushes_sent: Counter::default(),
            delta_pushes_sent: Counter::default(),
            pushes_failed: Counter::default(),
            push_fetches: Counter::default(),
            push_renders: Counter::default(),
            // 1 ms .. ~32 s
            publish_to_push_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            access_denied: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route (to the response head)",
            m.http_request_seconds.clone(),
        );
        registry.register("sessions", "Live client sessions", m.sessions.clone());
        registry.register(
            "publishers",
            "Publishers held by this session node",
            m.publishers.clone(),
        );
        registry.register(
            "subscribers",
            "Subscribers held by this session node",
            m.subscribers.clone(),
        );
        registry.register(
            "open_streams",
            "Open SSE event streams",
            m.open_streams.clone(),
        );
        registry.register(
            "blocking_queries",
            "Blocking queries (waitIndex) open now",
            m.blocking_queries.clone(),
        );
        registry.register(
            "pushes_sent",
            "Pushes queued to a subscriber's event stream",
            m.pushes_sent.clone(),
        );
        registry.register(
            "delta_pushes_sent",
            "Pushes queued as `event: delta` (opt-in delta subscribers), counted in pushes_sent too",
            m.delta_pushes_sent.clone(),
        );
        registry.register(
            "pushes_failed",
            "Pushes that could not be delivered (stream buffer full or closed, datum fetch failed)",
            m.pushes_failed.clone(),
        );
        registry.register(
            "push_fetches",
            "Datum fetches made by the push pipeline",
            m.push_fetches.clone(),
        );
        registry.register(
            "push_renders",
            "Datum versions rendered for push (each shared by every subscriber's stream)",
            m.push_renders.clone(),
        );
        registry.register(
            "publish_to_push_seconds",
            "Time from the first change merged into a push until it is queued to a subscriber",
            m.publish_to_push_seconds.clone(),
        );
        registry.register(
            "access_denied",
            "Public-API requests refused 401 or 403, by reason (missing_credential, invalid_credential, publish, subscribe, admin, session, owner)",
            m.access_denied.clone(),
        );
        *m.registry.lock() = registry;
        m
    }

    /// Lets another layer add its metrics to the same export.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock());
    }

    /// The Prometheus/OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }
}
