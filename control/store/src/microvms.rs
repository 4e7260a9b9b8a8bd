//! MicroVMs: one row per `RunMicrovm`, kept after termination so `Get`
//! and `List` can still report how a VM ended.

use rusqlite::{params, OptionalExtension, Row};

use crate::images::{fetch_limit, paginate};
use crate::{Page, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct MicrovmRecord {
    pub id: String,
    pub image: String,
    pub version: u32,
    pub image_arn: String,
    /// The run request as the service serialised it; opaque here.
    pub spec: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub endpoint: String,
    /// The proxy listener's address for per-VM-port endpoints, kept so a
    /// restarted daemon serves the same endpoint again.
    pub proxy_addr: Option<String>,
    pub started_at: f64,
    pub terminated_at: Option<f64>,
    pub last_active_at: f64,
    pub suspended_at: Option<f64>,
    pub updated_at: f64,
}

impl MicrovmRecord {
    const COLUMNS: &'static str = "id, image, version, image_arn, spec, state, state_reason, \
         endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at, updated_at";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            image: r.get(1)?,
            version: r.get(2)?,
            image_arn: r.get(3)?,
            spec: r.get(4)?,
            state: r.get(5)?,
            state_reason: r.get(6)?,
            endpoint: r.get(7)?,
            proxy_addr: r.get(8)?,
            started_at: r.get(9)?,
            terminated_at: r.get(10)?,
            last_active_at: r.get(11)?,
            suspended_at: r.get(12)?,
            updated_at: r.get(13)?,
        })
    }
}

/// A state change: the new state and what else changes with it.
#[derive(Debug, Clone, Default)]
pub struct MicrovmUpdate<'a> {
    pub state: &'a str,
    /// `Some(None)` clears the reason; `None` leaves it.
    pub state_reason: Option<Option<&'a str>>,
    pub suspended_at: Option<Option<f64>>,
    pub terminated_at: Option<f64>,
    pub now: f64,
}

impl Store {
    pub fn insert_microvm(&self, vm: &MicrovmRecord) -> Result<(), StoreError> {
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO microvms (id, image, version, image_arn, spec, state, state_reason,
                 endpoint, proxy_addr, started_at, terminated_at, last_active_at, suspended_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                vm.id,
                vm.image,
                vm.version,
                vm.image_arn,
                vm.spec,
                vm.state,
                vm.state_reason,
                vm.endpoint,
                vm.proxy_addr,
                vm.started_at,
                vm.terminated_at,
                vm.last_active_at,
                vm.suspended_at,
                vm.updated_at
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a microVM with id {} already exists",
                vm.id
            )));
        }
        Ok(())
    }

    pub fn microvm(&self, id: &str) -> Result<MicrovmRecord, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms WHERE id = ?1",
            MicrovmRecord::COLUMNS
        );
        conn.query_row(&sql, [id], MicrovmRecord::from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("microVM {id}")))
    }

    /// MicroVMs in the order they were run, after the one with id `after`,
    /// optionally only those of one image (and version).
    pub fn list_microvms(
        &self,
        after: Option<&str>,
        image: Option<&str>,
        version: Option<u32>,
        limit: usize,
    ) -> Result<Page<MicrovmRecord, String>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE seq > COALESCE((SELECT seq FROM microvms WHERE id = ?1), 0)
               AND (?2 IS NULL OR image = ?2) AND (?3 IS NULL OR version = ?3)
             ORDER BY seq LIMIT ?4",
            MicrovmRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params![after, image, version, fetch_limit(limit)],
                MicrovmRecord::from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, |v| v.id.clone()))
    }

    /// Every microVM not yet TERMINATED: what a restarted daemon takes
    /// back.
    pub fn live_microvms(&self) -> Result<Vec<MicrovmRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms WHERE state <> 'TERMINATED' ORDER BY seq",
            MicrovmRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([], MicrovmRecord::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A microVM not yet TERMINATED that runs from `image` (and
    /// `version`), if any: what keeps them from being deleted.
    pub fn first_live_microvm(
        &self,
        image: &str,
        version: Option<u32>,
    ) -> Result<Option<MicrovmRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM microvms
             WHERE image = ?1 AND (?2 IS NULL OR version = ?2) AND state <> 'TERMINATED'
             ORDER BY seq LIMIT 1",
            MicrovmRecord::COLUMNS
        );
        Ok(conn
            .query_row(&sql, params![image, version], MicrovmRecord::from_row)
            .optional()?)
    }

    pub fn count_live_microvms(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM microvms WHERE state <> 'TERMINATED'",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn update_microvm(&self, id: &str, u: &MicrovmUpdate<'_>) -> Result<(), StoreError> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE microvms SET state = ?2,
                 state_reason = CASE WHEN ?3 THEN ?4 ELSE state_reason END,
                 suspended_at = CASE WHEN ?5 THEN ?6 ELSE suspended_at END,
                 terminated_at = COALESCE(?7, terminated_at),
                 updated_at = ?8
             WHERE id = ?1",
            params![
                id,
                u.state,
                u.state_reason.is_some(),
                u.state_reason.flatten(),
                u.suspended_at.is_some(),
                u.suspended_at.flatten(),
                u.terminated_at,
                u.now
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("microVM {id}")));
        }
        Ok(())
    }

    /// Records the last inbound request, so idle timers survive a restart.
    pub fn set_microvm_last_active(&self, id: &str, at: f64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE microvms SET last_active_at = MAX(last_active_at, ?2) WHERE id = ?1",
            params![id, at],
        )?;
        Ok(())
    }

    /// A restarted daemon could not re-bind the old endpoint port.
    pub fn set_microvm_endpoint(
        &self,
        id: &str,
        endpoint: &str,
        proxy_addr: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE microvms SET endpoint = ?2, proxy_addr = ?3 WHERE id = ?1",
            params![id, endpoint, proxy_addr],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, image: &str, version: u32) -> MicrovmRecord {
        MicrovmRecord {
            id: id.into(),
            image: image.into(),
            version,
            image_arn: format!("arn:aws:lambda:us-east-1:123456789012:microvm-image:{image}"),
            spec: "{}".into(),
            state: "PENDING".into(),
            state_reason: None,
            endpoint: "http://127.0.0.1:1".into(),
            proxy_addr: None,
            started_at: 1.0,
            terminated_at: None,
            last_active_at: 1.0,
            suspended_at: None,
            updated_at: 1.0,
        }
    }

    #[test]
    fn microvms_list_in_run_order_with_filters_and_pages() {
        let store = Store::open_in_memory().unwrap();
        for (id, img, v) in [("c", "a", 1), ("a", "b", 1), ("b", "a", 2)] {
            store.insert_microvm(&record(id, img, v)).unwrap();
        }
        assert!(store.insert_microvm(&record("a", "x", 1)).is_err());
        let (page, next) = store.list_microvms(None, None, None, 2).unwrap();
        let ids: Vec<_> = page.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["c", "a"]);
        let (page, next) = store.list_microvms(next.as_deref(), None, None, 2).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, "b");
        assert!(next.is_none());
        let (page, _) = store.list_microvms(None, Some("a"), Some(2), 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, "b");
    }

    #[test]
    fn state_updates_keep_or_clear_the_reason() {
        let store = Store::open_in_memory().unwrap();
        store.insert_microvm(&record("m", "a", 1)).unwrap();
        let u = MicrovmUpdate {
            state: "SUSPENDED",
            state_reason: Some(Some("idle")),
            suspended_at: Some(Some(5.0)),
            now: 5.0,
            ..Default::default()
        };
        store.update_microvm("m", &u).unwrap();
        let m = store.microvm("m").unwrap();
        assert_eq!(
            (m.state.as_str(), m.state_reason.as_deref()),
            ("SUSPENDED", Some("idle"))
        );
        assert_eq!(m.suspended_at, Some(5.0));
        store
            .update_microvm(
                "m",
                &MicrovmUpdate {
                    state: "TERMINATED",
                    terminated_at: Some(9.0),
                    now: 9.0,
                    ..Default::default()
                },
            )
            .unwrap();
        let m = store.microvm("m").unwrap();
        assert_eq!(m.state_reason.as_deref(), Some("idle"));
        assert_eq!(m.terminated_at, Some(9.0));
        assert_eq!(store.live_microvms().unwrap().len(), 0);
        assert!(store.update_microvm("nope", &u).is_err());
    }

    #[test]
    fn the_first_live_microvm_of_an_image_or_version() {
        let store = Store::open_in_memory().unwrap();
        store.insert_microvm(&record("old", "a", 1)).unwrap();
        store.insert_microvm(&record("new", "a", 2)).unwrap();
        let done = MicrovmUpdate {
            state: "TERMINATED",
            now: 2.0,
            ..Default::default()
        };
        store.update_microvm("old", &done).unwrap();
        assert!(store.first_live_microvm("a", Some(1)).unwrap().is_none());
        assert_eq!(
            store.first_live_microvm("a", None).unwrap().unwrap().id,
            "new"
        );
        assert_eq!(
            store.first_live_microvm("a", Some(2)).unwrap().unwrap().id,
            "new"
        );
        assert!(store.first_live_microvm("b", None).unwrap().is_none());
    }
}
