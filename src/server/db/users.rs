//! Users, teams and memberships.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DbError, DbResult, audit, is_unique_violation, now, one};
use crate::ids::new_id;
use crate::proto::vocab::{SignupMode, TeamRole};

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_at: i64,
}

const USER_COLS: &str = "id, email, name, password_hash, is_admin, created_at";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
        password_hash: r.get(3)?,
        is_admin: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// A team membership of a user, only for teams that are not deleted.
#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub team_id: String,
    pub role: TeamRole,
}

/// Creates the user, a personal team and the owner membership in one transaction; `is_admin`
/// makes them a platform admin.
pub fn create_with_team(
    conn: &mut Connection,
    email: &str,
    name: &str,
    password_hash: Option<&str>,
    is_admin: bool,
) -> DbResult<(UserRow, String)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = insert_with_team(&tx, email, name, password_hash, is_admin)?;
    tx.commit()?;
    Ok(out)
}

/// What lets a signup in (SPEC §15), checked inside the signup's transaction so that concurrent
/// signups see each other.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub mode: SignupMode,
    /// The caller may create the first account of a fresh server, which becomes the platform
    /// admin (a loopback client, or one holding the bootstrap token).
    pub may_bootstrap: bool,
    /// The SHA-256 of the invite token the signup carries.
    pub invite_hash: Option<&'a str>,
}

/// Signs a new user up, in one transaction:
/// - on a server without users, only a caller that [`Admission::may_bootstrap`] gets in, as the
///   platform admin with a personal team (else `Conflict("bootstrap_required")`);
/// - with an invite (unless signups are closed), the user joins the invite's team, which is their
///   only and default team (refusals: the invite's `invite_*` codes);
/// - without one, only an `open` server creates the user with a personal team;
/// - anything else is `Conflict("signup_closed")`. A taken email is `Conflict("email_taken")`.
///
/// Returns the user and the team they land in.
pub fn signup(
    conn: &mut Connection,
    email: &str,
    name: &str,
    password_hash: &str,
    admission: Admission<'_>,
) -> DbResult<(UserRow, String)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    let out = if users == 0 {
        if !admission.may_bootstrap {
            return Err(DbError::Conflict("bootstrap_required"));
        }
        insert_with_team(&tx, email, name, Some(password_hash), true)?
    } else {
        match (admission.mode, admission.invite_hash) {
            (SignupMode::Closed, _) | (SignupMode::Invite, None) => {
                return Err(DbError::Conflict("signup_closed"));
            }
            (_, Some(hash)) => {
                let invite = super::invites::usable(&tx, hash)?;
                let user = insert_user(&tx, email, name, Some(password_hash), false)?;
                super::invites::redeem(&tx, &invite, &user.id, true)?;
                (user, invite.team_id)
            }
            (SignupMode::Open, None) => {
                insert_with_team(&tx, email, name, Some(password_hash), false)?
            }
        }
    };
    tx.commit()?;
    Ok(out)
}

fn insert_user(
    tx: &Connection,
    email: &str,
    name: &str,
    password_hash: Option<&str>,
    is_admin: bool,
) -> DbResult<UserRow> {
    let t = now();
    let user_id = new_id("usr");
    let inserted = tx.execute(
        "INSERT INTO users (id, email, name, password_hash, is_admin, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![user_id, email, name, password_hash, is_admin, t],
    );
    match inserted {
        Err(e) if is_unique_violation(&e) => return Err(DbError::Conflict("email_taken")),
        r => {
            r?;
        }
    }
    audit::record(tx, Some(&user_id), "user.signup", Some(&user_id), None)?;
    Ok(UserRow {
        id: user_id,
        email: email.to_string(),
        name: name.to_string(),
        password_hash: password_hash.map(str::to_string),
        is_admin,
        created_at: t,
    })
}

fn insert_with_team(
    tx: &Connection,
    email: &str,
    name: &str,
    password_hash: Option<&str>,
    is_admin: bool,
) -> DbResult<(UserRow, String)> {
    let user = insert_user(tx, email, name, password_hash, is_admin)?;
    let team = super::teams::insert(tx, &format!("{name}'s team"), &user.id, true)?;
    Ok((user, team.id))
}

pub fn by_email(conn: &Connection, email: &str) -> DbResult<Option<UserRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLS} FROM users WHERE email = ?1"),
            [email],
            user_row,
        )
        .optional()?)
}

pub fn get(conn: &Connection, id: &str) -> DbResult<UserRow> {
    one(conn.query_row(
        &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
        [id],
        user_row,
    ))
}

/// The team a login lands in: the default membership's team if it is active, else the earliest
/// joined active team. Soft-deleted teams never count.
pub fn login_team(conn: &Connection, user_id: &str) -> DbResult<Option<MembershipRow>> {
    Ok(conn
        .query_row(
            "SELECT m.team_id, m.role FROM memberships m JOIN teams t ON t.id = m.team_id
             WHERE m.user_id = ?1 AND t.deleted_at IS NULL
             ORDER BY m.is_default DESC, m.created_at ASC, m.team_id ASC LIMIT 1",
            [user_id],
            |r| {
                Ok(MembershipRow {
                    team_id: r.get(0)?,
                    role: r.get(1)?,
                })
            },
        )
        .optional()?)
}

/// The caller's role in an active team, or None.
pub fn membership(conn: &Connection, team_id: &str, user_id: &str) -> DbResult<Option<TeamRole>> {
    Ok(conn
        .query_row(
            "SELECT m.role FROM memberships m JOIN teams t ON t.id = m.team_id
             WHERE m.team_id = ?1 AND m.user_id = ?2 AND t.deleted_at IS NULL",
            params![team_id, user_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// True when the team exists and is not deleted.
pub fn team_active(conn: &Connection, team_id: &str) -> DbResult<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM teams WHERE id = ?1 AND deleted_at IS NULL",
            [team_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The user behind an OAuth identity.
pub fn by_identity(
    conn: &Connection,
    provider: &str,
    provider_user_id: &str,
) -> DbResult<Option<UserRow>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLS} FROM users WHERE id = (SELECT user_id FROM oauth_identities WHERE provider = ?1 AND provider_user_id = ?2)"
            ),
            params![provider, provider_user_id],
            user_row,
        )
        .optional()?)
}

/// Creates a password-less user with a personal team and links the OAuth identity, in one
/// transaction. Only an `open` server that already has its admin takes new accounts this way
/// (else `Conflict("signup_closed")`), and they are never platform admins. An email that already
/// has an account is `Conflict("email_taken")`.
pub fn create_from_identity(
    conn: &mut Connection,
    mode: SignupMode,
    provider: &str,
    provider_user_id: &str,
    email: &str,
    name: &str,
) -> DbResult<(UserRow, String)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    if users == 0 || mode != SignupMode::Open {
        return Err(DbError::Conflict("signup_closed"));
    }
    let (user, team) = insert_with_team(&tx, email, name, None, false)?;
    tx.execute(
        "INSERT INTO oauth_identities (provider, provider_user_id, user_id, email) VALUES (?1, ?2, ?3, ?4)",
        params![provider, provider_user_id, user.id, email],
    )
    .map_err(|e| if is_unique_violation(&e) { DbError::Conflict("identity_taken") } else { e.into() })?;
    tx.commit()?;
    Ok((user, team))
}

pub fn count(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::Db;

    #[tokio::test]
    async fn one_bootstrap_admin_then_the_mode_decides() {
        let db = Db::open_in_memory().unwrap();
        let gate = |mode, may_bootstrap| Admission {
            mode,
            may_bootstrap,
            invite_hash: None,
        };
        let first = db
            .call(move |c| signup(c, "a@x.io", "Ann", "h", gate(SignupMode::Open, false)))
            .await;
        assert!(matches!(
            first,
            Err(DbError::Conflict("bootstrap_required"))
        ));
        let (a, team_a) = db
            .call(move |c| signup(c, "a@x.io", "Ann", "h", gate(SignupMode::Closed, true)))
            .await
            .unwrap();
        assert!(a.is_admin);
        for mode in [SignupMode::Invite, SignupMode::Closed] {
            let r = db
                .call(move |c| signup(c, "b@x.io", "Bob", "h", gate(mode, true)))
                .await;
            assert!(
                matches!(r, Err(DbError::Conflict("signup_closed"))),
                "{mode}"
            );
        }
        let (b, team_b) = db
            .call(move |c| signup(c, "b@x.io", "Bob", "h", gate(SignupMode::Open, true)))
            .await
            .unwrap();
        assert!(!b.is_admin);
        let dup = db
            .call(move |c| signup(c, "a@x.io", "Ann2", "h", gate(SignupMode::Open, false)))
            .await;
        assert!(matches!(dup, Err(DbError::Conflict("email_taken"))));

        // Bob is invited to Ann's team (not default); his own team is deleted.
        let (bid, ta, tb) = (b.id.clone(), team_a.clone(), team_b.clone());
        let team = db
            .call(move |c| {
                c.execute(
                    "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES (?1, ?2, 'member', 0, 0)",
                    params![ta, bid],
                )?;
                c.execute("UPDATE teams SET deleted_at = 1 WHERE id = ?1", [tb])?;
                login_team(c, &bid)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(team.team_id, team_a);
        assert_eq!(team.role, "member");
    }
}
