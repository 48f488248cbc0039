//! The API's vocabularies (`proto::vocab`) as SQLite values: stored as the same words they travel
//! as on the wire; a word the enum does not know is an error when read, not a silent default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::proto::vocab::{HostStatus, OnTimeout, SandboxStatus, TeamRole, TemplateKind};

macro_rules! stored_as_word {
    ($($t:ty),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}

stored_as_word!(SandboxStatus, HostStatus, TeamRole, TemplateKind, OnTimeout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let back: HostStatus = c
            .query_row("SELECT ?1", [HostStatus::Draining], |r| r.get(0))
            .unwrap();
        assert_eq!(back, HostStatus::Draining);
        let text: String = c
            .query_row("SELECT ?1", [OnTimeout::Kill], |r| r.get(0))
            .unwrap();
        assert_eq!(text, "kill");
        let odd: rusqlite::Result<TeamRole> = c.query_row("SELECT 'boss'", [], |r| r.get(0));
        assert!(odd.is_err());
    }
}
