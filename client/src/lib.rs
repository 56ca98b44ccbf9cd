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

pub mod api;
pub mod backoff;
mod client;
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
pub use session::{ConnectionState, PublisherSpec, SubscriberSpec};
