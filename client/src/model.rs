//! The JSON bodies of the public HTTP API (API.md) as this client sends and reads them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const DEFAULT_INSTANCE_ID: &str = "DEFAULT_INSTANCE_ID";
pub const DEFAULT_ZONE: &str = "DEFAULT_ZONE";

/// The identity of a service; `group` and `instance_id` default as in API.md when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceId {
    pub data_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl ServiceId {
    pub fn new(data_id: impl Into<String>) -> ServiceId {
        ServiceId {
            data_id: data_id.into(),
            group: None,
            instance_id: None,
        }
    }

    pub fn group(mut self, group: impl Into<String>) -> ServiceId {
        self.group = Some(group.into());
        self
    }

    pub fn instance_id(mut self, instance_id: impl Into<String>) -> ServiceId {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// `{dataId}#@#{instanceId}#@#{group}` with the defaults filled in.
    pub fn data_info_id(&self) -> String {
        format!(
            "{}#@#{}#@#{}",
            self.data_id,
            self.instance_id.as_deref().unwrap_or(DEFAULT_INSTANCE_ID),
            self.group.as_deref().unwrap_or(DEFAULT_GROUP)
        )
    }
}

/// Which publishers a subscriber sees (API.md `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    Zone,
    #[default]
    DataCenter,
    Global,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSessionRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCreated {
    pub session_id: String,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    pub session_id: String,
    pub ttl_seconds: u64,
    #[serde(default)]
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublishRequest<'a> {
    #[serde(flatten)]
    pub service: &'a ServiceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<&'a str>,
    pub register_id: &'a str,
    pub data: &'a [String],
}

/// The answer to a publish: the publisher's own version (1 at first, +1 per replacement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    pub register_id: String,
    pub data_info_id: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub service: &'a ServiceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<&'a str>,
    pub scope: Scope,
    pub register_id: &'a str,
    /// Asks for `event: delta` pushes; left out when false, so the body is as before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub register_id: String,
    pub data_info_id: String,
}

/// One publisher as `GET /api/v1/data` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublisherInfo {
    pub register_id: String,
    pub zone: String,
    pub data: Vec<String>,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// `GET /api/v1/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataAnswer {
    pub data_info_id: String,
    pub version: u64,
    #[serde(default)]
    pub zones: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub publishers: Vec<PublisherInfo>,
}

/// One row of `GET /api/v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    pub data_info_id: String,
    pub data_id: String,
    pub group: String,
    pub instance_id: String,
    pub publisher_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesAnswer {
    pub services: Vec<ServiceInfo>,
}

/// `GET`/`PUT /api/v1/admin/push` (docs/INTERNAL.md): the stop-push switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushSwitch {
    pub stop_push: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_delay_millis: Option<u64>,
}

/// What one subscriber sees of its service: every live publisher's data in its scope,
/// grouped by the publisher's zone (a full snapshot, never a diff).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub register_id: String,
    pub data_info_id: String,
    pub data_id: String,
    pub group: String,
    pub instance_id: String,
    /// The datum version; never goes backwards for one subscription.
    pub version: u64,
    #[serde(default)]
    pub zones: BTreeMap<String, Vec<String>>,
}

/// An `event: delta` (README, "Delta pushes"): what changed per zone from the subscriber's
/// snapshot at `base_version` to `version`. Zones are multisets: each entry of `removed`
/// takes one occurrence out, each of `added` puts one in (see [`crate::snapshot::apply_delta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    pub register_id: String,
    pub data_info_id: String,
    pub data_id: String,
    pub group: String,
    pub instance_id: String,
    /// The version of the snapshot this delta applies to.
    pub base_version: u64,
    pub version: u64,
    #[serde(default)]
    pub added: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub removed: BTreeMap<String, Vec<String>>,
}

impl Snapshot {
    /// Every data item of every zone, zones in name order.
    pub fn all_data(&self) -> impl Iterator<Item = &str> {
        self.zones.values().flatten().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_id_defaults_in_data_info_id() {
        assert_eq!(
            ServiceId::new("echo").data_info_id(),
            "echo#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
        );
        assert_eq!(
            ServiceId::new("echo")
                .group("g")
                .instance_id("i")
                .data_info_id(),
            "echo#@#i#@#g"
        );
    }

    #[test]
    fn publish_body_is_camel_case_and_omits_defaults() {
        let service = ServiceId::new("echo").group("g");
        let data = vec!["10.0.0.1:80".to_owned()];
        let body = serde_json::to_value(PublishRequest {
            service: &service,
            zone: None,
            register_id: "r1",
            data: &data,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"dataId": "echo", "group": "g", "registerId": "r1", "data": ["10.0.0.1:80"]})
        );
        let body = serde_json::to_value(SubscribeRequest {
            service: &service,
            zone: Some("z1"),
            scope: Scope::Global,
            register_id: "s1",
            delta: false,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"dataId": "echo", "group": "g", "zone": "z1", "scope": "global", "registerId": "s1"})
        );
        let body = serde_json::to_value(SubscribeRequest {
            service: &service,
            zone: None,
            scope: Scope::DataCenter,
            register_id: "s2",
            delta: true,
        })
        .unwrap();
        assert_eq!(body["delta"], true);
    }
}
