//! `GET /api/v1/services`: API.md's `prefix` and `limit`, and the README's extension that
//! pages and sorts the list (what the console needs for 100,000 services): `offset`,
//! `sort` (`dataInfoId` | `publisherCount` | `subscriberCount`) and `order` (`asc` | `desc`).
//! With any of the three the answer also carries `total` (services matching the prefix)
//! and `offset`; without them it is exactly API.md's first `limit` services by dataInfoId.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::error::ApiError;
use crate::model::{ServiceKey, ServiceSummary};

pub const DEFAULT_SERVICES_LIMIT: usize = 1000;
pub const MAX_SERVICES_LIMIT: usize = 10_000;
/// Larger offsets are refused rather than walked.
pub const MAX_SERVICES_OFFSET: usize = 100_000_000;

/// What a list is sorted by; ties are broken by dataInfoId, so pages never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    DataInfoId,
    PublisherCount,
    SubscriberCount,
}

/// The page asked for, when the request uses the paging extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub offset: usize,
    pub sort: SortKey,
    pub descending: bool,
}

/// A parsed `GET /api/v1/services` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub limit: usize,
    pub paging: Option<Paging>,
}

/// One service with this node's subscriber count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub summary: ServiceSummary,
    pub subscriber_count: usize,
}

fn number(
    q: &HashMap<String, String>,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Option<usize>, ApiError> {
    q.get(name)
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!(
                "{name} must be an integer from {min} to {max}, got {v:?}"
            ))),
        })
        .transpose()
}

impl ListQuery {
    pub fn parse(q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
        let prefix = q.get("prefix").cloned().unwrap_or_default();
        let limit = number(q, "limit", 1, MAX_SERVICES_LIMIT)?.unwrap_or(DEFAULT_SERVICES_LIMIT);
        let offset = number(q, "offset", 0, MAX_SERVICES_OFFSET)?;
        let sort = q
            .get("sort")
            .map(|s| match s.as_str() {
                "dataInfoId" => Ok(SortKey::DataInfoId),
                "publisherCount" => Ok(SortKey::PublisherCount),
                "subscriberCount" => Ok(SortKey::SubscriberCount),
                _ => Err(ApiError::invalid(format!(
                    "sort must be dataInfoId, publisherCount or subscriberCount, got {s:?}"
                ))),
            })
            .transpose()?;
        let descending = q
            .get("order")
            .map(|o| match o.as_str() {
                "asc" => Ok(false),
                "desc" => Ok(true),
                _ => Err(ApiError::invalid(format!(
                    "order must be asc or desc, got {o:?}"
                ))),
            })
            .transpose()?;
        let paging = (offset.is_some() || sort.is_some() || descending.is_some()).then(|| Paging {
            offset: offset.unwrap_or(0),
            sort: sort.unwrap_or(SortKey::DataInfoId),
            descending: descending.unwrap_or(false),
        });
        Ok(ListQuery {
            prefix,
            limit,
            paging,
        })
    }

    /// How many services to ask the data layer for: a page needs every match (to sort
    /// and count them), API.md's list only the first `limit`.
    pub fn fetch_limit(&self) -> usize {
        if self.paging.is_some() {
            usize::MAX
        } else {
            self.limit
        }
    }

    /// The answer's body from the data layer's services (sorted by dataInfoId).
    pub fn answer(&self, rows: Vec<ServiceRow>) -> Value {
        let Some(paging) = self.paging else {
            return json!({ "services": rows.iter().map(row_json).collect::<Vec<_>>() });
        };
        let total = rows.len();
        let page = page(rows, paging, self.limit);
        json!({
            "services": page.iter().map(row_json).collect::<Vec<_>>(),
            "total": total,
            "offset": paging.offset,
        })
    }
}

/// Sorts `rows` (which come sorted by dataInfoId) as `paging` asks and keeps `limit` of
/// them from its offset.
pub fn page(mut rows: Vec<ServiceRow>, paging: Paging, limit: usize) -> Vec<ServiceRow> {
    if paging.sort == SortKey::DataInfoId {
        if paging.descending {
            rows.reverse();
        }
        return rows.into_iter().skip(paging.offset).take(limit).collect();
    }
    let count = |r: &ServiceRow| match paging.sort {
        SortKey::DataInfoId => 0,
        SortKey::PublisherCount => r.summary.publisher_count,
        SortKey::SubscriberCount => r.subscriber_count,
    };
    rows.sort_unstable_by(|a, b| {
        let by = count(a)
            .cmp(&count(b))
            .then_with(|| a.summary.data_info_id.cmp(&b.summary.data_info_id));
        if paging.descending {
            by.reverse()
        } else {
            by
        }
    });
    rows.into_iter().skip(paging.offset).take(limit).collect()
}

fn row_json(r: &ServiceRow) -> Value {
    let key = ServiceKey::parse(&r.summary.data_info_id);
    json!({
        "dataInfoId": r.summary.data_info_id,
        "dataId": key.as_ref().map(|k| k.data_id.as_str()),
        "group": key.as_ref().map(|k| k.group.as_str()),
        "instanceId": key.as_ref().map(|k| k.instance_id.as_str()),
        "publisherCount": r.summary.publisher_count,
        "subscriberCount": r.subscriber_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rows(n: usize) -> Vec<ServiceRow> {
        (0..n)
            .map(|i| ServiceRow {
                summary: ServiceSummary {
                    data_info_id: format!("svc{i:03}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP").into(),
                    publisher_count: i % 7,
                },
                subscriber_count: (n - i) % 5,
            })
            .collect()
    }

    #[test]
    fn without_paging_parameters_the_answer_is_api_md_as_written() {
        let list = ListQuery::parse(&q(&[("prefix", "svc"), ("limit", "2")])).expect("valid");
        assert_eq!(list.paging, None);
        assert_eq!(list.fetch_limit(), 2);
        let answer = list.answer(rows(2));
        assert_eq!(answer.as_object().expect("object").len(), 1, "{answer}");
        assert_eq!(answer["services"][1]["dataId"], "svc001");
        assert_eq!(
            ListQuery::parse(&q(&[])).expect("valid").limit,
            DEFAULT_SERVICES_LIMIT
        );
    }

    #[test]
    fn pages_are_sorted_disjoint_and_cover_everything() {
        for (sort, order) in [
            ("dataInfoId", "asc"),
            ("publisherCount", "desc"),
            ("subscriberCount", "asc"),
        ] {
            let mut seen = Vec::new();
            let mut offset = 0;
            loop {
                let list = ListQuery::parse(&q(&[
                    ("limit", "7"),
                    ("offset", &offset.to_string()),
                    ("sort", sort),
                    ("order", order),
                ]))
                .expect("valid");
                assert_eq!(list.fetch_limit(), usize::MAX);
                let answer = list.answer(rows(50));
                assert_eq!(answer["total"], 50);
                assert_eq!(answer["offset"], offset);
                let page = answer["services"].as_array().expect("list").clone();
                if page.is_empty() {
                    break;
                }
                assert!(page.len() <= 7);
                seen.extend(page);
                offset += 7;
            }
            assert_eq!(seen.len(), 50, "{sort}");
            let key = |v: &Value| match sort {
                "dataInfoId" => 0,
                _ => v[sort].as_u64().expect("count"),
            };
            for w in seen.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                let ordered = if order == "asc" {
                    (key(a), a["dataInfoId"].as_str()) < (key(b), b["dataInfoId"].as_str())
                } else {
                    (key(a), a["dataInfoId"].as_str()) > (key(b), b["dataInfoId"].as_str())
                };
                assert!(ordered, "{sort} {order}: {a} then {b}");
            }
        }
    }

    #[test]
    fn an_offset_past_the_end_is_an_empty_page_with_the_total() {
        let list = ListQuery::parse(&q(&[("offset", "60")])).expect("valid");
        let answer = list.answer(rows(50));
        assert_eq!(answer["services"], json!([]));
        assert_eq!(answer["total"], 50);
    }

    #[test]
    fn malformed_parameters_are_refused_naming_the_parameter() {
        for (name, value) in [
            ("limit", "0"),
            ("limit", "10001"),
            ("offset", "-1"),
            ("offset", "x"),
            ("offset", "100000001"),
            ("sort", "name"),
            ("order", "up"),
        ] {
            let err = ListQuery::parse(&q(&[(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }
}
