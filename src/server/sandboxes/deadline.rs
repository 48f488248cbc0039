//! A sandbox's absolute deadline (`end_at`), beside its idle timeout: when it passes, a running
//! sandbox is paused or killed as its `on_timeout` says, whatever its activity. E2B's `timeout`
//! is this deadline; our own API sets it with `end_in_sec`.

use super::SandboxService;
use super::error::{SandboxError, SandboxResult};
use super::rules;
use crate::ids::{SandboxId, TeamId};
use crate::proto::vocab::OnTimeout;
use crate::server::db::now;
use crate::server::db::sandboxes::{self, SandboxRow};

/// How a deadline moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineChange {
    /// To `n` seconds from now, earlier or later than it was; 0 removes it.
    Set(u64),
    /// To `n` seconds from now only when that is later than it was (a sandbox without one
    /// keeps none).
    Extend(u64),
}

/// The deadline after `change`, from the current one at time `now`. Pure.
pub fn next_deadline(current: Option<i64>, change: DeadlineChange, now: i64) -> Option<i64> {
    match change {
        DeadlineChange::Set(0) => None,
        DeadlineChange::Set(n) => Some(now + n as i64),
        DeadlineChange::Extend(n) => current.map(|end| end.max(now + n as i64)),
    }
}

impl SandboxService<'_> {
    /// Moves the deadline of the team's live sandbox `id` (see [`DeadlineChange`]).
    pub async fn set_deadline(
        &self,
        team: &TeamId,
        id: &SandboxId,
        change: DeadlineChange,
    ) -> SandboxResult<SandboxRow> {
        let (DeadlineChange::Set(n) | DeadlineChange::Extend(n)) = change;
        rules::check_deadline("end_in_sec", n)?;
        let s = self.lookup(team, id).await?;
        if s.status.is_terminal() {
            return Err(SandboxError::conflict(
                "invalid_transition",
                format!("the sandbox is {}", s.status),
            ));
        }
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| {
                let current = sandboxes::get_any(c, &sid)?.and_then(|r| r.end_at);
                sandboxes::set_end_at(c, &sid, next_deadline(current, change, now()))
            })
            .await?;
        self.lookup(team, id).await
    }

    /// What a passed deadline does to a running sandbox: pause it, or end it when it was
    /// created to be killed. Returns what it did.
    pub async fn expire_deadline(&self, s: &SandboxRow) -> SandboxResult<OnTimeout> {
        self.expire(s, "deadline reached").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_as_asked() {
        assert_eq!(
            next_deadline(Some(500), DeadlineChange::Set(10), 100),
            Some(110)
        );
        assert_eq!(next_deadline(None, DeadlineChange::Set(10), 100), Some(110));
        assert_eq!(next_deadline(Some(500), DeadlineChange::Set(0), 100), None);
        assert_eq!(
            next_deadline(Some(500), DeadlineChange::Extend(10), 100),
            Some(500)
        );
        assert_eq!(
            next_deadline(Some(500), DeadlineChange::Extend(900), 100),
            Some(1000)
        );
        assert_eq!(next_deadline(None, DeadlineChange::Extend(900), 100), None);
    }
}
