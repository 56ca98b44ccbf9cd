//! Client library for the registry's public HTTP API (API.md): sessions kept alive and
//! failed over, publishers and subscribers re-registered under their registerIds.
//!
//! ```no_run
//! use registry_client::{ClientConfig, Interest, Publication, RegistryClient};
//! # async fn example() -> Result<(), registry_client::Error> {
//! let client = RegistryClient::new(ClientConfig::new(["http://10.0.0.5:9603", "http://10.0.0.6:9603"]))?;
//! let mut publisher = client.publish(Publication::new("com.example.Echo", ["10.1.2.3:8080"])).await?;
//! let mut subscription = client.subscribe(Interest::new("com.example.Echo")).await?;
//! while let Some(snapshot) = subscription.next().await {
//!     println!("v{}: {:?}", snapshot.version, snapshot.all_data().collect::<Vec<_>>());
//! #   break;
//! }
//! publisher.update(["10.1.2.3:8080", "10.1.2.4:8080"]).await?;
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Delta pushes
//!
//! `Interest::new(..).delta(true)` asks the node for delta pushes (README, "Delta pushes"):
//! after a first full push on each event stream the node sends only the items added and
//! removed per zone, and the client applies them to the snapshot it holds
//! ([`snapshot::apply_delta`]), so the subscription still yields full snapshots: each zone
//! the same items as a full push (a multiset; the order within a zone may differ). A delta
//! that does not apply to what the client holds makes it reopen the stream, which brings a
//! full push.
//!
//! ## Refused re-registration
//!
//! After a session loss or a failover the client registers every publisher and subscriber
//! again under its registerId. A node may refuse one for a reason that retrying cannot
//! cure: 409 `conflict` (another session already holds the registerId, or uses it for
//! another service) or another 4xx such as 400 `invalid_argument`. Each handle says where
//! it stands with [`Registration`]: `Registered`, `Pending` (no session, or being
//! registered again; retried with backoff from `ClientConfig::retry_interval` up to
//! `backoff_max`, e.g. on 503) or `Refused(error)`. A refused entry is no longer retried, on
//! this session or later ones; `Publisher::update` offers a publisher again, and a refused
//! subscription's `next()` returns `None`. A conflict with a session this client itself
//! abandoned (its node failed us but kept it) is not a refusal: the client deletes that
//! session and tries again.
//!
//! ```no_run
//! # async fn example(publisher: registry_client::Publisher) {
//! let mut registration = publisher.watch_registration();
//! if let Ok(state) = registration.wait_for(|state| state.refusal().is_some()).await {
//!     eprintln!("the registry refused {}: {:?}", publisher.register_id(), state.refusal());
//! };
//! # }
//! ```

pub mod api;
pub mod backoff;
mod client;
pub mod credential;
pub mod error;
pub mod model;
mod session;
pub mod snapshot;

pub use api::{Endpoints, HttpSettings, NodeApi};
pub use client::{
    new_register_id, CallbackGuard, ClientConfig, Interest, Publication, Publisher, RegistryClient,
    Subscription,
};
pub use error::{Error, ErrorCode};
pub use model::{
    DataAnswer, Published, PublisherInfo, PushSwitch, Scope, ServiceId, ServiceInfo,
    ServicesAnswer, Snapshot, Subscribed,
};
pub use session::{ConnectionState, PublisherSpec, Registration, SubscriberSpec};
