//! E2B's list routes, `GET /v2/sandboxes` and the legacy `GET /sandboxes`: the query parsed as
//! the SDKs send it (E2B.md §2.6: `state` comma-joined, `metadata` one double-encoded
//! `k=v&k2=v2` string) and a page answered with `X-Next-Token` while there is more.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use serde::Deserialize;

use super::errors::{E2bCaller, E2bError, E2bResult};
use super::shapes;
use crate::proto::e2b::SandboxInfo;
use crate::server::AppState;
use crate::server::sandboxes::listing::{MAX_PAGE, SandboxQuery};
use crate::server::state::SandboxStatus;

/// The response header naming the next page.
pub const NEXT_TOKEN: &str = "x-next-token";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub state: Option<String>,
    pub metadata: Option<String>,
    pub template: Option<String>,
    pub started_after: Option<String>,
    pub order: Option<String>,
    pub limit: Option<String>,
    pub next_token: Option<String>,
}

/// `k1=v1&k2=v2` as the SDKs send it: each key and value `quote`d, then the pairs form-encoded
/// (the query's own decoding has already happened).
pub fn parse_metadata(raw: &str) -> E2bResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // The form decoding of `parse_qsl`, then the SDK's own `quote` undone.
        let decode = |s: &str| {
            let once = percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map_err(|_| E2bError::bad("metadata", "not UTF-8 once decoded"))?
                .into_owned();
            percent_encoding::percent_decode_str(&once)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| E2bError::bad("metadata", "not UTF-8 once decoded"))
        };
        let k = decode(k)?;
        if k.is_empty() {
            return Err(E2bError::bad("metadata", "an empty key"));
        }
        out.insert(k, decode(v)?);
    }
    Ok(out)
}

/// The query as the service takes it.
pub fn to_query(q: &ListQuery) -> E2bResult<SandboxQuery> {
    let statuses = match q.state.as_deref().map(str::trim) {
        None | Some("") => vec![SandboxStatus::Running, SandboxStatus::Paused],
        Some(s) => s
            .split(',')
            .map(|one| match one.trim() {
                "running" => Ok(SandboxStatus::Running),
                "paused" => Ok(SandboxStatus::Paused),
                other => Err(E2bError::bad(
                    "state",
                    format!("{other:?}: must be running or paused"),
                )),
            })
            .collect::<E2bResult<_>>()?,
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => MAX_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| E2bError::bad("limit", format!("must be 1 to {MAX_PAGE}")))?,
    };
    let oldest_first = match q.order.as_deref() {
        None | Some("") | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(E2bError::bad(
                "order",
                format!("{other:?}: must be asc or desc"),
            ));
        }
    };
    Ok(SandboxQuery {
        statuses,
        metadata: q
            .metadata
            .as_deref()
            .map(parse_metadata)
            .transpose()?
            .unwrap_or_default(),
        template: q.template.clone().filter(|t| !t.is_empty()),
        started_after: q
            .started_after
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| shapes::parse_rfc3339("startedAfter", t))
            .transpose()?,
        oldest_first,
        after: q.next_token.clone().filter(|t| !t.is_empty()),
        limit,
    })
}

/// `GET /v2/sandboxes` (and the legacy `GET /sandboxes`, which takes the same query).
pub async fn list(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> E2bResult<(HeaderMap, Json<Vec<SandboxInfo>>)> {
    let Query(q) = query.map_err(|e| E2bError::bad("query", e.body_text()))?;
    let q = to_query(&q)?;
    let team = caller.team_id()?;
    let page = st
        .sandboxes()
        .list_page(&team, &q)
        .await
        .map_err(super::sandboxes::e2b_fields)?;
    let mut headers = HeaderMap::new();
    if let Some(next) = page.next.as_deref()
        && let Ok(v) = HeaderValue::from_str(next)
    {
        headers.insert(NEXT_TOKEN, v);
    }
    let items = page
        .sandboxes
        .iter()
        .filter_map(|s| shapes::info(s, false))
        .collect();
    Ok((headers, Json(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_as_the_sdk_sends_them() {
        let q = to_query(&ListQuery {
            state: Some("paused".into()),
            metadata: Some("user%253Did=a%2526b&env=prod&odd%2520key=x%2By".into()),
            limit: Some("1".into()),
            order: Some("asc".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(q.statuses, vec![SandboxStatus::Paused]);
        assert_eq!(q.metadata.get("user=id").map(String::as_str), Some("a&b"));
        assert_eq!(q.metadata.get("env").map(String::as_str), Some("prod"));
        assert_eq!(q.metadata.get("odd key").map(String::as_str), Some("x+y"));
        assert!(q.oldest_first && q.limit == 1);
        let all = to_query(&ListQuery::default()).unwrap();
        assert_eq!(all.statuses.len(), 2);
        assert_eq!(all.limit, MAX_PAGE);
        for bad in [
            ListQuery {
                state: Some("dead".into()),
                ..Default::default()
            },
            ListQuery {
                limit: Some("0".into()),
                ..Default::default()
            },
            ListQuery {
                limit: Some("101".into()),
                ..Default::default()
            },
            ListQuery {
                order: Some("up".into()),
                ..Default::default()
            },
            ListQuery {
                started_after: Some("soon".into()),
                ..Default::default()
            },
        ] {
            assert!(to_query(&bad).is_err(), "{bad:?}");
        }
    }
}
