//! A real Postgres server for the suite: Debian's postgresql-15 binaries,
//! a fresh cluster in a temporary folder, a Unix socket only, one database
//! per test. Started once per test binary and ended with it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PORT: u16 = 5432;

pub struct Server {
    socket_dir: PathBuf,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The connection string of a new, empty database on the shared server.
pub async fn fresh_database() -> String {
    let server = match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("the conformance suite's Postgres did not start: {e}"),
    };
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    // The socket appears before the server accepts logins: retry a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, conn) = loop {
        match tokio_postgres::connect(&server.conninfo("postgres"), tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to the suite's Postgres: {e}"),
        }
    };
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    server.conninfo(&name)
}

impl Server {
    fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user=ember dbname={db}",
            self.socket_dir.display()
        )
    }
}

fn bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("EMBER_PG_BINDIR") {
        return Ok(dir.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("/usr/lib/postgresql: {e}: install postgresql-15 (scripts/install-deps.sh)")
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin: install postgresql-15".into())
}

/// Postgres refuses to run as root: as root, the server runs as the
/// `postgres` account the Debian package creates.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let out = Command::new("getent")
        .args(["passwd", "postgres"])
        .output()
        .map_err(|e| format!("getent: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split(':').collect();
    match (fields.get(2), fields.get(3)) {
        (Some(uid), Some(gid)) => Ok(Some((
            uid.parse().map_err(|_| "postgres uid")?,
            gid.parse().map_err(|_| "postgres gid")?,
        ))),
        _ => Err("no postgres account: install postgresql-15 (scripts/install-deps.sh)".into()),
    }
}

fn command(bin: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

const CLUSTER_PREFIX: &str = "ember-store-pg-";

fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(CLUSTER_PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Result<Server, String> {
    let bindir = bindir()?;
    let user = server_user()?;
    // The cluster lives as long as the test binary, so nothing removes it
    // at exit: each start removes those of binaries no longer running.
    remove_stale_clusters();
    let root = std::env::temp_dir().join(format!("{CLUSTER_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let data = root.join("data");
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let out = command(&bindir.join("initdb"), user)
        .args(["-D"])
        .arg(&data)
        .args(["-U", "ember", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let postgres = bindir.join("postgres");
    let (data_c, root_c) = (data.clone(), root.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    // The server is the child of a thread that lives until the test binary
    // exits; PR_SET_PDEATHSIG then ends it (it follows the forking thread). SIGQUIT is
    // its immediate shutdown: the postmaster still ends and reaps its workers.
    std::thread::spawn(move || {
        let mut cmd = command(&postgres, user);
        cmd.arg("-D")
            .arg(&data_c)
            .arg("-k")
            .arg(&root_c)
            .args(["-p", &PORT.to_string()])
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!("postgres: {e}")));
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let socket = root.join(format!(".s.PGSQL.{PORT}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err("postgres did not open its socket within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { socket_dir: root })
}
