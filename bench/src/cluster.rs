//! `{"bench":"cluster"}`: two emberd nodes, n1 and n2, on one throwaway
//! Postgres with one cluster key. Only n1 builds the image, so a run sent
//! to n2 is placed on n1 by the store: what that costs against a run sent
//! to n1 itself; the hop of an endpoint request that n2 tunnels to n1
//! against the same request to n1; and, with n1 killed, how long until n2
//! declares it dead and its VM terminated.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ember::api_client::ApiClient;
use ember::microvm_api;
use reqwest::Method;
use serde_json::{json, Value};

use crate::edge::pct;
use crate::median;
use crate::microvm::{self, end_run, round3, Emberd, Opts};
use crate::procfs::qemu_pids;

const DOMAIN: &str = "vms.bench.test";
const LEASE_S: u64 = 4;
const REQUESTS: usize = 400;
const WARMUP: usize = 20;
/// busybox httpd serves it without forking a CGI: the hop's cost shows.
const PATH: &str = "/health";
const APP_PORT: &str = "8080";
/// Polling while a run to RUNNING is timed (SLOW_POLL would hide the
/// placement's few ms), and while waiting for the dead node's sweep.
const RUN_POLL: Duration = Duration::from_millis(20);
const DEAD_POLL: Duration = Duration::from_millis(50);

pub async fn run(data_dir: &Path, agent: &Path, opts: &Opts) -> anyhow::Result<Value> {
    let bindir = std::env::var_os("EMBER_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    if let Some(why) = cannot_run_postgres(&bindir) {
        return Ok(json!({"bench": "cluster", "skipped": why}));
    }
    let mut pg = Postgres::start(&bindir).await?;
    let result = async {
        pg.psql("postgres", "CREATE DATABASE ember_bench_cluster")
            .await?;
        with_store(data_dir, agent, opts, &pg.url("ember_bench_cluster")).await
    }
    .await;
    pg.stop().await;
    result
}

/// Why this host cannot start the bench's Postgres, if it cannot.
fn cannot_run_postgres(bindir: &Path) -> Option<String> {
    for tool in ["initdb", "postgres", "psql"] {
        if !bindir.join(tool).exists() {
            return Some(format!(
                "{} is missing: install postgresql-15 (scripts/install-deps.sh)",
                bindir.join(tool).display()
            ));
        }
    }
    if as_root() && postgres_account().is_none() {
        return Some("running as root and there is no `postgres` account to run Postgres".into());
    }
    None
}

fn as_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` system user's (uid, gid): Postgres refuses to run as root.
fn postgres_account() -> Option<(u32, u32)> {
    // SAFETY: getpwnam with a NUL-terminated name; the record it points to
    // is read at once, before any other call could reuse it.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A fresh Postgres cluster in a temporary folder, reachable only on its
/// Unix socket there, as tests/api/postgres_server.py makes one.
struct Postgres {
    bindir: PathBuf,
    root: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    child: Option<tokio::process::Child>,
}

impl Postgres {
    async fn start(bindir: &Path) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("ember-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let user = as_root().then(postgres_account).flatten();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", root.display()))?;
        }
        let mut pg = Self {
            bindir: bindir.to_path_buf(),
            root,
            port: free_port()?,
            user,
            child: None,
        };
        if let Err(e) = pg.boot().await {
            pg.stop().await;
            return Err(e);
        }
        Ok(pg)
    }

    /// A command for a server binary, as the server's account.
    fn command(&self, tool: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(self.bindir.join(tool));
        c.current_dir(&self.root);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let data = self.root.join("data");
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(&data);
        succeed(initdb.args(["-U", "ember", "-A", "trust", "--no-sync", "-E", "UTF8"])).await?;
        let log_path = self.root.join("server.log");
        let log = std::fs::File::create(&log_path).context("creating server.log")?;
        let mut server = self.command("postgres");
        server.arg("-D").arg(&data).arg("-k").arg(&self.root);
        let port = self.port.to_string();
        server.args(["-p", &port, "-c", "listen_addresses=", "-c", "fsync=off"]);
        // Its own process group: a ^C to the bench is not its shutdown.
        server.stdout(Stdio::null()).stderr(log).process_group(0);
        let child = server.spawn();
        self.child = Some(child.context("starting postgres")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.psql("postgres", "SELECT 1").await.is_ok() {
                return Ok(());
            }
            let exited = self.child.as_mut().map(|c| c.try_wait());
            if matches!(exited, Some(Ok(Some(_)))) || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("postgres did not start: {log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn psql(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        let mut psql = tokio::process::Command::new(self.bindir.join("psql"));
        psql.arg("-h").arg(&self.root);
        psql.args(["-p", &self.port.to_string(), "-U", "ember", "-d", database]);
        succeed(psql.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])).await
    }

    /// The `--store` URL: the socket folder as a percent-encoded host.
    fn url(&self, database: &str) -> String {
        let host: String = self
            .root
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .map(|&b| match b {
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://ember@{host}:{}/{database}", self.port)
    }

    /// SIGINT, Postgres' fast shutdown: it ends the sessions of emberds
    /// still connected (SIGTERM would wait for them). Then its folder goes.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child's pid; no memory involved.
                unsafe {
                    libc::kill(pid as i32, libc::SIGINT);
                }
            }
            let waited = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            if waited.is_err() {
                let _ = child.kill().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `c` to its end; a failure is an error with what it wrote.
async fn succeed(c: &mut tokio::process::Command) -> anyhow::Result<()> {
    let what = format!("{:?}", c.as_std());
    let out = c
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// One emberd of the cluster: its folder, API and wildcard listener port.
struct Node {
    dir: PathBuf,
    api: ApiClient,
    endpoint_port: u16,
}

/// The two nodes on the store at `url`; their folders are kept if the
/// bench fails (their emberd.log), removed otherwise.
async fn with_store(
    data_dir: &Path,
    agent: &Path,
    opts: &Opts,
    url: &str,
) -> anyhow::Result<Value> {
    let (_, key_dir, assets) = microvm::fresh_dir(data_dir, "bench-cluster")?;
    let key = key_dir.join("cluster.key");
    write_key(&key)?;
    let (_, dir1, _) = microvm::fresh_dir(data_dir, "bench-cluster-n1")?;
    let (_, dir2, _) = microvm::fresh_dir(data_dir, "bench-cluster-n2")?;
    let (port1, port2) = (free_port()?, free_port()?);
    let args = |id, port| node_args(id, url, &key, port);
    let (args1, args2) = (args("n1", port1), args("n2", port2));
    let mut n1 = Emberd::start(&dir1, &assets, agent, opts, &as_strs(&args1)).await?;
    // Both nodes take the same key pair, so one client's signature works
    // on either (as tests/api/conftest.py's SeparateEmberds does).
    let shared = std::fs::read(dir1.join("credentials"))
        .context("reading n1's credentials")
        .and_then(|c| write_private(&dir2.join("credentials"), &c));
    if let Err(e) = shared {
        return end_run(&mut n1, &dir1, "cluster", Err(e));
    }
    let mut n2 = match Emberd::start(&dir2, &assets, agent, opts, &as_strs(&args2)).await {
        Ok(d) => d,
        Err(e) => return end_run(&mut n1, &dir1, "cluster", Err(e)),
    };
    let result = async {
        let node = |dir: &Path, endpoint_port| {
            anyhow::Ok(Node {
                dir: dir.to_path_buf(),
                api: ApiClient::from_data_dir(dir, None, "us-east-1")?,
                endpoint_port,
            })
        };
        measure(&node(&dir1, port1)?, &mut n1, &node(&dir2, port2)?, opts).await
    }
    .await;
    let result = end_run(&mut n1, &dir1, "cluster", result);
    let result = end_run(&mut n2, &dir2, "cluster", result);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&key_dir);
    }
    result
}

fn as_strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn node_args(id: &str, url: &str, key: &Path, endpoint_port: u16) -> Vec<String> {
    vec![
        format!("--store={url}"),
        format!("--node-id={id}"),
        format!("--node-lease-seconds={LEASE_S}"),
        format!("--cluster-key-file={}", key.display()),
        "--internal-listen=127.0.0.1:0".into(),
        format!("--endpoint-domain={DOMAIN}"),
        format!("--endpoint-listen=127.0.0.1:{endpoint_port}"),
    ]
}

/// The cluster's secret: 32 random bytes, 0600 and ours, as emberd checks.
fn write_key(path: &Path) -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut random, &mut secret)?;
    write_private(path, &secret)
}

/// A new file only its owner reads (its folder is fresh).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(std::io::Write::write_all(&mut f, bytes)?)
}

async fn measure(n1: &Node, daemon1: &mut Emberd, n2: &Node, opts: &Opts) -> anyhow::Result<Value> {
    microvm::build_image(&n1.api).await?;

    // Runs through each node in turn, the order swapped every round so
    // neither always goes first.
    let (mut holder, mut other) = (Vec::new(), Vec::new());
    for i in 0..opts.runs {
        for via_holder in [i % 2 == 0, i % 2 != 0] {
            let api = if via_holder { &n1.api } else { &n2.api };
            let list = if via_holder { &mut holder } else { &mut other };
            list.push(timed_run(api).await?);
        }
    }
    let med =
        |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| round3(median(v.iter().map(f).collect()));
    let running_holder = med(&holder, |t| t.1);
    let running_other = med(&other, |t| t.1);

    // One VM asked of n2, which the store places on n1.
    let vm = microvm::run_vm(&n2.api, Some(3600)).await?;
    wait_state(&n2.api, &vm.id, "RUNNING").await?;
    let (on_n1, on_n2) = (qemu_pids(&n1.dir).len(), qemu_pids(&n2.dir).len());
    anyhow::ensure!(
        on_n1 == 1 && on_n2 == 0,
        "the VM asked of n2 was not placed on n1 ({on_n1} QEMUs under n1, {on_n2} under n2)"
    );
    let token = microvm::token(&n2.api, &vm.id).await?;
    let (owner, via_other) =
        hop_latencies(n1.endpoint_port, n2.endpoint_port, &vm.id, &token).await?;

    // n1 and its QEMUs killed at once, as a host that dies.
    let t = Instant::now();
    daemon1.stop(&n1.dir);
    let (mut dead, mut terminated) = (None, None);
    while dead.is_none() || terminated.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("after 60 s n1 dead: {dead:?} ms, its VM terminated: {terminated:?} ms");
        }
        if dead.is_none() && node_state(&n2.api, "n1").await?.as_deref() == Some("DEAD") {
            dead = Some(ms(t));
        }
        if terminated.is_none() && microvm_api::get(&n2.api, &vm.id).await?["state"] == "TERMINATED"
        {
            terminated = Some(ms(t));
        }
        tokio::time::sleep(DEAD_POLL).await;
    }

    let (p50_owner, p50_other) = (pct(&owner, 50.0), pct(&via_other, 50.0));
    Ok(json!({
        "bench": "cluster",
        "example": microvm::IMAGE,
        "path": PATH,
        "runs": opts.runs,
        "requests": REQUESTS,
        "run_api_ms_via_holder": med(&holder, |t| t.0),
        "run_api_ms_via_other": med(&other, |t| t.0),
        "run_to_running_ms_via_holder": running_holder,
        "run_to_running_ms_via_other": running_other,
        "placement_overhead_ms": round3(running_other - running_holder),
        "p50_ms_via_owner": p50_owner,
        "p99_ms_via_owner": pct(&owner, 99.0),
        "p50_ms_via_other": p50_other,
        "p99_ms_via_other": pct(&via_other, 99.0),
        "hop_p50_ms": round3(p50_other - p50_owner),
        "lease_ms": LEASE_S * 1000,
        "dead_detected_ms": dead,
        "vm_terminated_ms": terminated,
    }))
}

/// (the RunMicrovm call, the call until GET says RUNNING), in ms; then
/// the VM is terminated.
async fn timed_run(api: &ApiClient) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let vm = microvm::run_vm(api, Some(3600)).await?;
    let call = ms(t);
    wait_state(api, &vm.id, "RUNNING").await?;
    let running = ms(t);
    microvm::terminate(api, &vm.id).await?;
    Ok((call, running))
}

async fn wait_state(api: &ApiClient, id: &str, want: &str) -> anyhow::Result<()> {
    microvm_api::wait_state(api, id, want, RUN_POLL, Duration::from_secs(300))
        .await
        .map(drop)
}

/// `node`'s state in `GET /ember/v1/nodes` as the node behind `api` sees it.
async fn node_state(api: &ApiClient, node: &str) -> anyhow::Result<Option<String>> {
    let out = api.call(Method::GET, "/ember/v1/nodes", &[], None).await?;
    let nodes = out["nodes"]
        .as_array()
        .context("the node list answered without its nodes")?;
    Ok(nodes
        .iter()
        .find(|n| n["nodeId"] == node)
        .and_then(|n| n["state"].as_str().map(str::to_string)))
}

/// `REQUESTS` requests each through the owner's wildcard listener and
/// through the other node's (tunnelled to the owner), on one kept-alive
/// client per node, alternated so both see the same moments of the host.
async fn hop_latencies(
    owner_port: u16,
    other_port: u16,
    id: &str,
    token: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let owner = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let other = reqwest::Client::builder().tcp_nodelay(true).build()?;
    for _ in 0..WARMUP {
        get(&owner, owner_port, id, token).await?;
        get(&other, other_port, id, token).await?;
    }
    let (mut a, mut b) = (Vec::with_capacity(REQUESTS), Vec::with_capacity(REQUESTS));
    for _ in 0..REQUESTS {
        a.push(get(&owner, owner_port, id, token).await?);
        b.push(get(&other, other_port, id, token).await?);
    }
    Ok((a, b))
}

/// `GET /health` of VM `id` through the wildcard listener on `port`, the
/// VM named by the Host header as a client resolving its name sends it;
/// in ms until the whole answer was read.
async fn get(http: &reqwest::Client, port: u16, id: &str, token: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = http
        .get(format!("http://127.0.0.1:{port}{PATH}"))
        .header(reqwest::header::HOST, format!("{id}.{DOMAIN}:{port}"))
        .header("X-aws-proxy-auth", token)
        .header("X-aws-proxy-port", APP_PORT)
        .send()
        .await
        .with_context(|| format!("GET {PATH} through 127.0.0.1:{port}"))?;
    let status = r.status();
    anyhow::ensure!(status.is_success(), "127.0.0.1:{port} answered {status}");
    r.bytes().await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn ms(t: Instant) -> f64 {
    round3(t.elapsed().as_secs_f64() * 1e3)
}
