//! Rows per state, for emberd's metrics: one GROUP BY per table, cheap
//! enough to run at every scrape.

use crate::records::Counted;
use crate::StoreError;

use super::SqliteStore;

impl SqliteStore {
    /// `(state, rows)` of every state that has at least one row.
    pub(crate) fn count_by_state(&self, table: Counted) -> Result<Vec<(String, u64)>, StoreError> {
        // The table name comes from this enum only, never from a caller's
        // text.
        let sql = match table {
            Counted::Microvms => "SELECT state, COUNT(*) FROM microvms GROUP BY state",
            Counted::Images => "SELECT state, COUNT(*) FROM images GROUP BY state",
            Counted::Builds => "SELECT state, COUNT(*) FROM builds GROUP BY state",
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| {
            let n: i64 = r.get(1)?;
            Ok((r.get::<_, String>(0)?, u64::try_from(n).unwrap_or(0)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
