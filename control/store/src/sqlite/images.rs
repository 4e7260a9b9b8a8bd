//! Images, versions, builds and tags.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::records::{
    fetch_limit, paginate, BuildRecord, ImageRecord, NewImage, NewVersion, Page, VersionRecord,
};
use crate::StoreError;

use super::SqliteStore;

impl SqliteStore {
    /// Creates an image with its version 1 and that version's build.
    pub(crate) fn create_image(&self, new: &NewImage) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO images (name, arn, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![new.name, new.arn, new.state, new.version.now],
        )?;
        if inserted == 0 {
            return Err(StoreError::image_exists(&new.name));
        }
        for (k, v) in &new.tags {
            tx.execute(
                "INSERT INTO tags (image, key, value) VALUES (?1, ?2, ?3)",
                (&new.name, k, v),
            )?;
        }
        insert_version(&tx, &new.name, 1, &new.version, self.node().as_deref())?;
        tx.commit()?;
        Ok(())
    }

    /// Adds the next version (and its build) to an image and sets the
    /// image's state; returns the new version number.
    pub(crate) fn add_version(
        &self,
        image: &str,
        image_state: &str,
        version: &NewVersion,
    ) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE image = ?1",
            [image],
            |r| r.get(0),
        )?;
        let changed = tx.execute(
            "UPDATE images SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![image, image_state, version.now],
        )?;
        if changed == 0 {
            return Err(StoreError::image_not_found(image));
        }
        insert_version(&tx, image, next, version, self.node().as_deref())?;
        tx.commit()?;
        Ok(next)
    }

    pub(crate) fn image(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM images WHERE name = ?1",
            ImageRecord::COLUMNS
        );
        conn.query_row(&sql, [name], ImageRecord::from_sqlite)
            .optional()?
            .ok_or_else(|| StoreError::image_not_found(name))
    }

    /// Images ordered by name, after `after`, whose name contains `filter`.
    pub(crate) fn list_images(
        &self,
        after: Option<&str>,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Page<ImageRecord, String>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM images WHERE name > ?1 AND instr(name, ?2) > 0 ORDER BY name LIMIT ?3",
            ImageRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params![
                    after.unwrap_or(""),
                    filter.unwrap_or(""),
                    fetch_limit(limit)
                ],
                ImageRecord::from_sqlite,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, |i| i.name.clone()))
    }

    pub(crate) fn set_image_state(
        &self,
        name: &str,
        state: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE images SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, state, now],
        )?;
        if changed == 0 {
            return Err(StoreError::image_not_found(name));
        }
        Ok(())
    }

    /// Removes an image with its versions, builds and tags.
    pub(crate) fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM images WHERE name = ?1", [name])?;
        Ok(())
    }

    pub(crate) fn version(&self, image: &str, version: u32) -> Result<VersionRecord, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM versions WHERE image = ?1 AND version = ?2",
            VersionRecord::COLUMNS
        );
        conn.query_row(&sql, params![image, version], VersionRecord::from_sqlite)
            .optional()?
            .ok_or_else(|| StoreError::version_not_found(image, version))
    }

    /// Versions of one image in ascending order, after version `after`.
    pub(crate) fn list_versions(
        &self,
        image: &str,
        after: u32,
        limit: usize,
    ) -> Result<Page<VersionRecord, u32>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM versions WHERE image = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
            VersionRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params![image, after, fetch_limit(limit)],
                VersionRecord::from_sqlite,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, |v| v.version))
    }

    /// Every version of every image, for start-up checks.
    pub(crate) fn all_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {} FROM versions", VersionRecord::COLUMNS);
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map([], VersionRecord::from_sqlite)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub(crate) fn update_version_state(
        &self,
        image: &str,
        version: u32,
        state: &str,
        reason: Option<&str>,
        snapshot_dir: Option<&str>,
        now: f64,
    ) -> Result<(), StoreError> {
        // The snapshot is in the data dir of the node that wrote it.
        let node = self.identity.get().map(|(id, _)| id);
        self.conn().execute(
            "UPDATE versions SET state = ?3, state_reason = ?4,
                 snapshot_dir = COALESCE(?5, snapshot_dir),
                 snapshot_node = CASE WHEN ?5 IS NULL THEN snapshot_node ELSE ?7 END,
                 updated_at = ?6
             WHERE image = ?1 AND version = ?2",
            params![image, version, state, reason, snapshot_dir, now, node],
        )?;
        Ok(())
    }

    pub(crate) fn set_version_blob(
        &self,
        image: &str,
        version: u32,
        digest: &str,
        class: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE versions SET snapshot_blob = ?3, snapshot_class = ?4, updated_at = ?5
             WHERE image = ?1 AND version = ?2",
            params![image, version, digest, class, now],
        )?;
        if changed == 0 {
            return Err(StoreError::version_not_found(image, version));
        }
        Ok(())
    }

    pub(crate) fn set_version_status(
        &self,
        image: &str,
        version: u32,
        status: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE versions SET status = ?3, updated_at = ?4 WHERE image = ?1 AND version = ?2",
            params![image, version, status, now],
        )?;
        if changed == 0 {
            return Err(StoreError::version_not_found(image, version));
        }
        Ok(())
    }

    pub(crate) fn delete_version(&self, image: &str, version: u32) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM versions WHERE image = ?1 AND version = ?2",
            params![image, version],
        )?;
        Ok(())
    }

    pub(crate) fn build(&self, id: &str) -> Result<BuildRecord, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {} FROM builds WHERE id = ?1", BuildRecord::COLUMNS);
        conn.query_row(&sql, [id], BuildRecord::from_sqlite)
            .optional()?
            .ok_or_else(|| StoreError::build_not_found(id))
    }

    /// Builds of one version, oldest first, after build id `after`.
    pub(crate) fn list_builds(
        &self,
        image: &str,
        version: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<BuildRecord, String>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM builds WHERE image = ?1 AND version = ?2 AND id > ?3
             ORDER BY id LIMIT ?4",
            BuildRecord::COLUMNS
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params![image, version, after.unwrap_or(""), fetch_limit(limit)],
                BuildRecord::from_sqlite,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, |b| b.id.clone()))
    }

    /// Builds that were pending or running, e.g. when the daemon died.
    pub(crate) fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM builds WHERE state IN ('PENDING', 'IN_PROGRESS') ORDER BY id",
            BuildRecord::COLUMNS
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map([], BuildRecord::from_sqlite)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub(crate) fn update_build_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now: f64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE builds SET state = ?2, state_reason = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, state, reason, now],
        )?;
        Ok(())
    }

    pub(crate) fn set_build_sizes(
        &self,
        id: &str,
        memory_bytes: u64,
        disk_bytes: u64,
        code_bytes: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE builds SET memory_bytes = ?2, disk_bytes = ?3, code_bytes = ?4 WHERE id = ?1",
            params![id, memory_bytes, disk_bytes, code_bytes],
        )?;
        Ok(())
    }

    pub(crate) fn tags(&self, image: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT key, value FROM tags WHERE image = ?1 ORDER BY key")?;
        let rows = stmt
            .query_map([image], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Adds or overwrites tags, refusing to go over `max_tags` in total.
    pub(crate) fn set_tags(
        &self,
        image: &str,
        tags: &[(String, String)],
        max_tags: usize,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (k, v) in tags {
            tx.execute(
                "INSERT INTO tags (image, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (image, key) DO UPDATE SET value = excluded.value",
                (image, k, v),
            )?;
        }
        let count: i64 =
            tx.query_row("SELECT COUNT(*) FROM tags WHERE image = ?1", [image], |r| {
                r.get(0)
            })?;
        if count as usize > max_tags {
            return Err(StoreError::too_many_tags(max_tags, count));
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn remove_tags(&self, image: &str, keys: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for k in keys {
            tx.execute("DELETE FROM tags WHERE image = ?1 AND key = ?2", (image, k))?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn insert_version(
    tx: &Transaction<'_>,
    image: &str,
    number: u32,
    v: &NewVersion,
    node: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO versions (image, version, spec, state, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![image, number, v.spec, v.state, v.status, v.now],
    )?;
    tx.execute(
        "INSERT INTO builds (id, image, version, state, log_path, created_at, updated_at, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
        params![
            v.build_id,
            image,
            number,
            v.build_state,
            v.log_path,
            v.now,
            node
        ],
    )?;
    Ok(())
}
