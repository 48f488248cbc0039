//! A sandbox's usage samples (CPU, memory, disk), kept by its host for the last hour and asked
//! for here: the REST route and E2B's `/sandboxes/{id}/metrics` both answer with this.

use std::time::Duration;

use super::error::{SandboxError, SandboxResult};
use super::{AgentCall, SandboxService};
use crate::ids::{SandboxId, TeamId};
use crate::proto::api::SandboxMetric;
use crate::server::pool::MAX_JSON_ANSWER;
use crate::server::state::SandboxStatus;

/// Which samples to answer: unix seconds, both ends included, either open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl MetricsRange {
    /// Reads `start` and `end` as they come in a query string; errors name the field.
    pub fn parse(start: Option<&str>, end: Option<&str>) -> SandboxResult<MetricsRange> {
        let read = |field: &str, v: Option<&str>| -> SandboxResult<Option<i64>> {
            let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            match v.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Some(n)),
                _ => Err(SandboxError::invalid(
                    field,
                    format!("{v:?} is not a time in unix seconds (a whole number, 0 or more)"),
                )),
            }
        };
        let range = MetricsRange {
            start: read("start", start)?,
            end: read("end", end)?,
        };
        if let (Some(s), Some(e)) = (range.start, range.end)
            && e < s
        {
            return Err(SandboxError::invalid("end", "is before start"));
        }
        Ok(range)
    }
}

impl SandboxService<'_> {
    /// The team's sandbox `id`'s usage samples in `range`, oldest first. A sandbox that has not
    /// started yet has none; a paused one has those of its running time; an ended one's went with
    /// its VM (409 `sandbox_not_running`).
    pub async fn metrics(
        &self,
        team: &TeamId,
        id: &SandboxId,
        range: MetricsRange,
    ) -> SandboxResult<Vec<SandboxMetric>> {
        let s = self.lookup(team, id).await?;
        match s.status {
            SandboxStatus::Pending | SandboxStatus::Starting => return Ok(Vec::new()),
            st if st.is_terminal() => {
                return Err(SandboxError::conflict(
                    "sandbox_not_running",
                    format!("the sandbox is {st}; its metrics went with it"),
                ));
            }
            _ => {}
        }
        let link = self.host_of(&s).await?;
        let mut query = Vec::new();
        if let Some(start) = range.start {
            query.push(format!("start={start}"));
        }
        if let Some(end) = range.end {
            query.push(format!("end={end}"));
        }
        let path = match query.is_empty() {
            true => format!("/v1/vms/{}/metrics", s.id),
            false => format!("/v1/vms/{}/metrics?{}", s.id, query.join("&")),
        };
        link.client
            .json(
                reqwest::Method::GET,
                &path,
                Duration::from_secs(15),
                MAX_JSON_ANSWER,
            )
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: SandboxError) -> String {
        match e {
            SandboxError::Invalid { field, .. } => field,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn ranges_name_the_bad_field() {
        assert_eq!(
            MetricsRange::parse(Some("10"), Some("20")).unwrap(),
            MetricsRange {
                start: Some(10),
                end: Some(20)
            }
        );
        assert_eq!(
            MetricsRange::parse(None, Some("")).unwrap(),
            MetricsRange::default()
        );
        assert_eq!(
            field(MetricsRange::parse(Some("soon"), None).unwrap_err()),
            "start"
        );
        assert_eq!(
            field(MetricsRange::parse(None, Some("-1")).unwrap_err()),
            "end"
        );
        assert_eq!(
            field(MetricsRange::parse(Some("1.5"), None).unwrap_err()),
            "start"
        );
        assert_eq!(
            field(MetricsRange::parse(Some("30"), Some("20")).unwrap_err()),
            "end"
        );
    }
}
