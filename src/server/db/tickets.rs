//! One-time tickets: a random value handed to a browser (a download link, the OAuth hand-off),
//! stored as its hash, bound to the session that asked for it, good once and briefly.

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbResult, now};

/// What a ticket is for; a ticket of one purpose never opens another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Download,
    OauthHandoff,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Download => "download",
            Purpose::OauthHandoff => "oauth_handoff",
        }
    }
}

/// What a ticket grants, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketGrant {
    pub user_id: String,
    /// The session it is bound to: the ticket works only while that session is live.
    pub session_id: Option<String>,
    pub team_id: Option<String>,
    pub sandbox_id: Option<String>,
    pub path: Option<String>,
}

/// Stores a ticket by its hash until `expires_at` (and drops tickets long expired).
pub fn create(
    conn: &Connection,
    ticket_hash: &str,
    purpose: Purpose,
    grant: &TicketGrant,
    expires_at: i64,
) -> DbResult<()> {
    conn.execute("DELETE FROM tickets WHERE expires_at < ?1", [now() - 3600])?;
    conn.execute(
        "INSERT INTO tickets (ticket_hash, purpose, user_id, session_id, team_id, sandbox_id, path, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            ticket_hash,
            purpose.as_str(),
            grant.user_id,
            grant.session_id,
            grant.team_id,
            grant.sandbox_id,
            grant.path,
            expires_at
        ],
    )?;
    Ok(())
}

/// Uses the ticket up: the grant when it exists for `purpose`, is unused, unexpired and its
/// session (if it has one) is still live; `None` otherwise (and always on a second try).
pub fn redeem(
    conn: &Connection,
    ticket_hash: &str,
    purpose: Purpose,
) -> DbResult<Option<TicketGrant>> {
    let t = now();
    let found = conn
        .query_row(
            "SELECT k.user_id, k.session_id, k.team_id, k.sandbox_id, k.path,
                    (k.session_id IS NULL OR (s.ended_at IS NULL AND s.expires_at > ?3))
             FROM tickets k LEFT JOIN sessions s ON s.id = k.session_id
             WHERE k.ticket_hash = ?1 AND k.purpose = ?2 AND k.used_at IS NULL AND k.expires_at >= ?3",
            params![ticket_hash, purpose.as_str(), t],
            |r| {
                Ok((
                    TicketGrant {
                        user_id: r.get(0)?,
                        session_id: r.get(1)?,
                        team_id: r.get(2)?,
                        sandbox_id: r.get(3)?,
                        path: r.get(4)?,
                    },
                    r.get::<_, bool>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((redeemed, session_live)) = found else {
        return Ok(None);
    };
    // Whoever marks it used wins; everyone after finds it used.
    let n = conn.execute(
        "UPDATE tickets SET used_at = ?1 WHERE ticket_hash = ?2 AND used_at IS NULL",
        params![t, ticket_hash],
    )?;
    Ok((n == 1 && session_live).then_some(redeemed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::sessions::{self, NewSession};
    use crate::server::db::{Db, users};

    #[tokio::test]
    async fn tickets_work_once_for_their_purpose_and_live_session() {
        let db = Db::open_in_memory().unwrap();
        db.call(|c| {
            let (u, _) = users::create_with_team(c, "a@x.io", "Ann", Some("h"), false)?;
            let new = NewSession {
                method: "password",
                ttl_secs: 3600,
                ..Default::default()
            };
            let s = sessions::create(c, &u.id, &new)?;
            let grant = TicketGrant {
                user_id: u.id.clone(),
                session_id: Some(s.id.clone()),
                sandbox_id: Some("sbx_a".into()),
                ..Default::default()
            };
            create(c, "h1", Purpose::Download, &grant, now() + 60)?;
            assert_eq!(
                redeem(c, "h1", Purpose::OauthHandoff)?,
                None,
                "other purpose"
            );
            let r = redeem(c, "h1", Purpose::Download)?.expect("first use");
            assert_eq!(r, grant);
            assert_eq!(redeem(c, "h1", Purpose::Download)?, None, "second use");
            create(c, "h2", Purpose::Download, &grant, now() - 1)?;
            assert_eq!(redeem(c, "h2", Purpose::Download)?, None, "expired");
            create(c, "h3", Purpose::Download, &grant, now() + 60)?;
            sessions::end(c, &u.id, &s.id, "session.logout")?;
            assert_eq!(redeem(c, "h3", Purpose::Download)?, None, "session ended");
            Ok(())
        })
        .await
        .unwrap();
    }
}
