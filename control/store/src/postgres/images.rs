//! Images, versions, builds, tags and the per-state counts.

use deadpool_postgres::Transaction;

use crate::records::{
    fetch_limit, paginate, BuildRecord, Counted, ImageRecord, NewImage, NewVersion, Page,
    VersionRecord,
};
use crate::StoreError;

use super::rows::all;
use super::{to_i32, to_i64, PostgresStore};

impl PostgresStore {
    pub(crate) async fn create_image(&self, new: &NewImage) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO images (name, arn, state, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO NOTHING",
                &[&new.name, &new.arn, &new.state, &new.version.now],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::image_exists(&new.name));
        }
        for (k, v) in &new.tags {
            tx.execute(
                "INSERT INTO tags (image, key, value) VALUES ($1, $2, $3)",
                &[&new.name, k, v],
            )
            .await?;
        }
        insert_version(&tx, &new.name, 1, &new.version, self.node().as_deref()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn add_version(
        &self,
        image: &str,
        image_state: &str,
        version: &NewVersion,
    ) -> Result<u32, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The image's row lock, taken first, orders two hosts adding a
        // version at once: the second sees the first's number.
        let changed = tx
            .execute(
                "UPDATE images SET state = $2, updated_at = $3 WHERE name = $1",
                &[&image, &image_state, &version.now],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::image_not_found(image));
        }
        let next: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE image = $1",
                &[&image],
            )
            .await?
            .try_get(0)?;
        let next = u32::try_from(next)
            .map_err(|_| StoreError::Corrupt(format!("version numbers of {image}")))?;
        insert_version(&tx, image, next, version, self.node().as_deref()).await?;
        tx.commit().await?;
        Ok(next)
    }

    pub(crate) async fn image(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM images WHERE name = $1",
            ImageRecord::COLUMNS
        );
        match self.query_opt(&sql, &[&name]).await? {
            Some(row) => ImageRecord::from_pg(&row),
            None => Err(StoreError::image_not_found(name)),
        }
    }

    pub(crate) async fn list_images(
        &self,
        after: Option<&str>,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Page<ImageRecord, String>, StoreError> {
        let sql = format!(
            "SELECT {} FROM images WHERE name > $1 AND strpos(name, $2) > 0 ORDER BY name LIMIT $3",
            ImageRecord::COLUMNS
        );
        let rows = self
            .query(
                &sql,
                &[
                    &after.unwrap_or(""),
                    &filter.unwrap_or(""),
                    &fetch_limit(limit),
                ],
            )
            .await?;
        Ok(paginate(all(rows, ImageRecord::from_pg)?, limit, |i| {
            i.name.clone()
        }))
    }

    pub(crate) async fn set_image_state(
        &self,
        name: &str,
        state: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self
            .execute(
                "UPDATE images SET state = $2, updated_at = $3 WHERE name = $1",
                &[&name, &state, &now],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::image_not_found(name));
        }
        Ok(())
    }

    pub(crate) async fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM images WHERE name = $1", &[&name])
            .await?;
        Ok(())
    }

    pub(crate) async fn version(
        &self,
        image: &str,
        version: u32,
    ) -> Result<VersionRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM versions WHERE image = $1 AND version = $2",
            VersionRecord::COLUMNS
        );
        let row = self.query_opt(&sql, &[&image, &to_i32(version)?]).await?;
        match row {
            Some(row) => VersionRecord::from_pg(&row),
            None => Err(StoreError::version_not_found(image, version)),
        }
    }

    pub(crate) async fn list_versions(
        &self,
        image: &str,
        after: u32,
        limit: usize,
    ) -> Result<Page<VersionRecord, u32>, StoreError> {
        let sql = format!(
            "SELECT {} FROM versions WHERE image = $1 AND version > $2 ORDER BY version LIMIT $3",
            VersionRecord::COLUMNS
        );
        // An `after` beyond INTEGER is after every version there is.
        let after = i32::try_from(after).unwrap_or(i32::MAX);
        let rows = self
            .query(&sql, &[&image, &after, &fetch_limit(limit)])
            .await?;
        Ok(paginate(all(rows, VersionRecord::from_pg)?, limit, |v| {
            v.version
        }))
    }

    pub(crate) async fn all_versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        let sql = format!("SELECT {} FROM versions", VersionRecord::COLUMNS);
        all(self.query(&sql, &[]).await?, VersionRecord::from_pg)
    }

    pub(crate) async fn update_version_state(
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
        self.execute(
            "UPDATE versions SET state = $3, state_reason = $4,
                     snapshot_dir = COALESCE($5, snapshot_dir),
                     snapshot_node = CASE WHEN $5::text IS NULL THEN snapshot_node ELSE $7 END,
                     updated_at = $6
                 WHERE image = $1 AND version = $2",
            &[
                &image,
                &to_i32(version)?,
                &state,
                &reason,
                &snapshot_dir,
                &now,
                &node,
            ],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn set_version_blob(
        &self,
        image: &str,
        version: u32,
        digest: &str,
        class: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self
            .execute(
                "UPDATE versions SET snapshot_blob = $3, snapshot_class = $4, updated_at = $5
                 WHERE image = $1 AND version = $2",
                &[&image, &to_i32(version)?, &digest, &class, &now],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::version_not_found(image, version));
        }
        Ok(())
    }

    pub(crate) async fn set_version_status(
        &self,
        image: &str,
        version: u32,
        status: &str,
        now: f64,
    ) -> Result<(), StoreError> {
        let changed = self.execute(
                "UPDATE versions SET status = $3, updated_at = $4 WHERE image = $1 AND version = $2",
                &[&image, &to_i32(version)?, &status, &now],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::version_not_found(image, version));
        }
        Ok(())
    }

    pub(crate) async fn delete_version(&self, image: &str, version: u32) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM versions WHERE image = $1 AND version = $2",
            &[&image, &to_i32(version)?],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn build(&self, id: &str) -> Result<BuildRecord, StoreError> {
        let sql = format!("SELECT {} FROM builds WHERE id = $1", BuildRecord::COLUMNS);
        match self.query_opt(&sql, &[&id]).await? {
            Some(row) => BuildRecord::from_pg(&row),
            None => Err(StoreError::build_not_found(id)),
        }
    }

    pub(crate) async fn list_builds(
        &self,
        image: &str,
        version: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<BuildRecord, String>, StoreError> {
        let sql = format!(
            "SELECT {} FROM builds WHERE image = $1 AND version = $2 AND id > $3
             ORDER BY id LIMIT $4",
            BuildRecord::COLUMNS
        );
        let rows = self
            .query(
                &sql,
                &[
                    &image,
                    &to_i32(version)?,
                    &after.unwrap_or(""),
                    &fetch_limit(limit),
                ],
            )
            .await?;
        Ok(paginate(all(rows, BuildRecord::from_pg)?, limit, |b| {
            b.id.clone()
        }))
    }

    pub(crate) async fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM builds
             WHERE state IN ('PENDING', 'IN_PROGRESS') AND (node IS NULL OR node = $1::text)
             ORDER BY id",
            BuildRecord::COLUMNS
        );
        all(
            self.query(&sql, &[&self.node()]).await?,
            BuildRecord::from_pg,
        )
    }

    pub(crate) async fn update_build_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now: f64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE builds SET state = $2, state_reason = $3, updated_at = $4 WHERE id = $1",
            &[&id, &state, &reason, &now],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn set_build_sizes(
        &self,
        id: &str,
        memory_bytes: u64,
        disk_bytes: u64,
        code_bytes: u64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE builds SET memory_bytes = $2, disk_bytes = $3, code_bytes = $4 WHERE id = $1",
            &[
                &id,
                &to_i64(memory_bytes),
                &to_i64(disk_bytes),
                &to_i64(code_bytes),
            ],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn tags(&self, image: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .query(
                "SELECT key, value FROM tags WHERE image = $1 ORDER BY key",
                &[&image],
            )
            .await?;
        all(rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
    }

    pub(crate) async fn set_tags(
        &self,
        image: &str,
        tags: &[(String, String)],
        max_tags: usize,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The image's row lock keeps two hosts' concurrent tag writes from
        // each passing the cap check with the other's tags uncounted.
        let image_rows = tx
            .execute("SELECT 1 FROM images WHERE name = $1 FOR UPDATE", &[&image])
            .await?;
        if image_rows == 0 {
            return Err(StoreError::image_not_found(image));
        }
        for (k, v) in tags {
            tx.execute(
                "INSERT INTO tags (image, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (image, key) DO UPDATE SET value = EXCLUDED.value",
                &[&image, k, v],
            )
            .await?;
        }
        let count: i64 = tx
            .query_one("SELECT COUNT(*) FROM tags WHERE image = $1", &[&image])
            .await?
            .try_get(0)?;
        if usize::try_from(count).unwrap_or(usize::MAX) > max_tags {
            return Err(StoreError::too_many_tags(max_tags, count));
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn remove_tags(&self, image: &str, keys: &[String]) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM tags WHERE image = $1 AND key = ANY($2)",
            &[&image, &keys],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn count_by_state(
        &self,
        table: Counted,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        // The table name comes from this enum only, never from a caller's
        // text.
        let sql = match table {
            Counted::Microvms => "SELECT state, COUNT(*) FROM microvms GROUP BY state",
            Counted::Images => "SELECT state, COUNT(*) FROM images GROUP BY state",
            Counted::Builds => "SELECT state, COUNT(*) FROM builds GROUP BY state",
        };
        let rows = self.query(sql, &[]).await?;
        all(rows, |r| {
            let n: i64 = r.try_get(1)?;
            Ok((r.try_get(0)?, u64::try_from(n).unwrap_or(0)))
        })
    }
}

async fn insert_version(
    tx: &Transaction<'_>,
    image: &str,
    number: u32,
    v: &NewVersion,
    node: Option<&str>,
) -> Result<(), StoreError> {
    let number = to_i32(number)?;
    tx.execute(
        "INSERT INTO versions (image, version, spec, state, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[&image, &number, &v.spec, &v.state, &v.status, &v.now],
    )
    .await?;
    tx.execute(
        "INSERT INTO builds (id, image, version, state, log_path, created_at, updated_at, node)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
        &[
            &v.build_id,
            &image,
            &number,
            &v.build_state,
            &v.log_path,
            &v.now,
            &node,
        ],
    )
    .await?;
    Ok(())
}
