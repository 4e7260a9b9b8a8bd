//! Rows per state, for emberd's metrics: one GROUP BY per table, cheap
//! enough to run at every scrape.

use crate::{Store, StoreError};

/// Which table to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Microvms,
    Images,
    Builds,
}

impl Store {
    /// `(state, rows)` of every state that has at least one row.
    pub fn count_by_state(&self, table: Counted) -> Result<Vec<(String, u64)>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewImage, NewVersion};

    fn image(name: &str) -> NewImage {
        NewImage {
            name: name.into(),
            arn: format!("arn:{name}"),
            state: "CREATING".into(),
            tags: Vec::new(),
            version: NewVersion {
                spec: "{}".into(),
                state: "PENDING".into(),
                status: "ACTIVE".into(),
                build_id: format!("b-{name}"),
                build_state: "PENDING".into(),
                log_path: format!("/logs/{name}"),
                now: 1.0,
            },
        }
    }

    #[test]
    fn counts_group_rows_by_state() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.count_by_state(Counted::Images).unwrap().is_empty());
        store.create_image(&image("a")).unwrap();
        store.create_image(&image("b")).unwrap();
        store.set_image_state("b", "FAILED", 2.0).unwrap();
        let mut images = store.count_by_state(Counted::Images).unwrap();
        images.sort();
        assert_eq!(
            images,
            vec![("CREATING".to_string(), 1), ("FAILED".to_string(), 1)]
        );
        assert_eq!(
            store.count_by_state(Counted::Builds).unwrap(),
            vec![("PENDING".to_string(), 2)]
        );
        assert!(store.count_by_state(Counted::Microvms).unwrap().is_empty());
    }
}
