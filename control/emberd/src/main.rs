//! `emberd`: Ember's server. Serves the Lambda MicroVMs REST API (SigV4),
//! keeps its state in SQLite under `--data-dir`, and builds images in
//! microVMs.

mod api_server;
mod blobs;
mod build_logs;
mod builds;
mod cluster;
mod connectors;
mod credentials;
mod endpoint;
mod layout;
mod metadata;
mod metrics;
mod microvm_fork;
mod microvm_logs;
mod microvms;
mod node;
mod nodes_api;
mod registries;
mod service;
mod shell;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use ember_assets::AssetStore;
use ember_builder::{Builder, BuilderConfig};
use ember_proxy::{Proxy, ProxyConfig, TokenKey};
use ember_store::StateStore;
use ember_vmm::qemu::{CgroupConfig, IdRange, IoLimits, JailConfig, QemuConfig, QemuHypervisor};
use ember_vmm::Hypervisor;

use crate::builds::Builds;
use crate::layout::DataDir;
use crate::service::Daemon;

#[derive(Parser, Debug)]
#[command(
    name = "emberd",
    version,
    about = "Ember's server: the Lambda MicroVMs API on your own hosts"
)]
struct Args {
    /// Where emberd keeps its database, credentials, images and VMs.
    #[arg(long, env = "EMBER_DATA_DIR", default_value = "build/data")]
    data_dir: PathBuf,
    /// Where the state (images, builds, microVMs, idempotency records)
    /// lives: a SQLite file (default: DATA_DIR/ember.db) or
    /// `postgres://user:password@host/db`. One emberd per database for
    /// now: a second is refused until hosts can share one.
    #[arg(long, env = "EMBER_STORE")]
    store: Option<ember_store::StoreLocation>,
    /// The CA (PEM) a Postgres store's server certificate must chain to;
    /// without it, the system's roots. TCP connections to Postgres use TLS
    /// unless the URL says `sslmode=disable` or `sslmode=prefer`.
    #[arg(long, requires = "store")]
    store_ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) emberd presents to a Postgres
    /// store that asks for one (pg_hba `cert`, or `clientcert=verify-full`).
    #[arg(long, value_name = "FILE", requires_all = ["store", "store_client_key"])]
    store_client_cert: Option<PathBuf>,
    /// The PEM private key of --store-client-cert; refused if group or
    /// others can read it.
    #[arg(long, value_name = "FILE", requires = "store_client_cert")]
    store_client_key: Option<PathBuf>,
    /// Address to serve the API on (port 0 picks a free one; see DATA_DIR/endpoint).
    #[arg(long, default_value = "127.0.0.1:9070")]
    listen: SocketAddr,
    /// Egress of microVMs and builds whose request names no egress
    /// connector: `none` (Ember's default: untrusted code gets no network
    /// unless asked) or `internet` (the real service's default). An
    /// explicit empty list always means none.
    #[arg(long, value_enum, default_value = "none")]
    default_egress: connectors::DefaultEgress,
    /// The region in ARNs and accepted in signatures' scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The 12-digit account id in ARNs.
    #[arg(long, default_value = "123456789012")]
    account: String,
    /// Image builds that may run at once; more wait as PENDING.
    #[arg(long, default_value_t = 2)]
    max_builds: usize,
    /// Memory of a build VM, in MiB (RUN steps such as apt-get need room).
    #[arg(long, default_value_t = 1024)]
    build_memory_mib: u32,
    /// Guest kernel, initramfs and base images (built on first use).
    #[arg(long, env = "EMBER_ASSETS_DIR")]
    assets_dir: Option<PathBuf>,
    /// The static guest agent packed into the initramfs.
    #[arg(
        long,
        env = "EMBER_AGENT_BIN",
        default_value = "target/x86_64-unknown-linux-gnu/guest/ember-agent"
    )]
    agent: PathBuf,
    /// Accelerator: auto (probe the host), kvm or tcg.
    #[arg(long, env = "EMBER_ACCEL", default_value = "auto")]
    accel: String,
    /// The lowest `maxIdleDurationSeconds` RunMicrovm accepts. The model's
    /// floor is 60; tests and demos lower it.
    #[arg(long, default_value_t = 60)]
    min_idle_seconds: u32,
    /// MicroVMs this emberd holds at once, running or suspended
    /// (ServiceQuotaExceededException beyond).
    #[arg(long, default_value_t = 2000)]
    max_microvms: u64,
    /// MicroVMs running at once (InsufficientCapacityException beyond).
    #[arg(long, default_value_t = 100)]
    max_running_microvms: u64,
    /// Memory kept free for the host, in MiB: a microVM starts only if its
    /// RAM fits into what is available beyond this.
    #[arg(long, default_value_t = 1024)]
    memory_reserve_mib: u64,
    /// After this many seconds suspended, a microVM's memory is stored as
    /// a difference from its image's (a few MiB instead of its RAM); a
    /// resume then rebuilds it first.
    #[arg(long, default_value_t = 60)]
    compact_after_seconds: u32,
    /// Host memory warm-suspended microVMs may hold in all, in MiB. A
    /// suspend keeps the VM's process paused with its guest memory released
    /// (a resume is a continue, not a restore); beyond this the oldest go
    /// to disk. 0 sends every suspend to disk. Default: an eighth of RAM.
    #[arg(long)]
    warm_suspended_mib: Option<u64>,
    /// MicroVMs per image version restored ahead of time, so a RunMicrovm
    /// claims one instead of restoring (egress-less runs only). They count
    /// against --max-microvms and the running slots.
    #[arg(long, default_value_t = 0)]
    warm_pool: usize,
    /// CPU a microVM may use, in percent of one host core (its cgroup).
    #[arg(long, default_value_t = 100)]
    vm_cpu_percent: u32,
    /// Do not record a suspended VM's working set, nor read it in first
    /// when the VM resumes from disk (for measuring what it saves).
    #[arg(long)]
    no_working_set_prefetch: bool,
    /// The address per-VM endpoint listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    endpoint_ip: std::net::IpAddr,
    /// Seconds an endpoint connection may sit idle (no request in flight,
    /// no WebSocket byte) before it is closed; must be below
    /// --min-idle-seconds. Default: 30, or half of --min-idle-seconds.
    #[arg(long)]
    endpoint_idle_timeout: Option<f64>,
    /// Client connections one microVM's endpoint serves at once (503
    /// MICROVM_UNAVAILABLE beyond).
    #[arg(long, default_value_t = 256)]
    max_connections_per_vm: usize,
    /// Client connections the shared --endpoint-domain listener serves at once.
    #[arg(long, default_value_t = 4096)]
    max_connections_per_listener: usize,
    /// Block I/O a VM (build or microVM) may do on the data dir's disk, in
    /// MiB/s each way; 0 leaves it unthrottled (needed when the data dir
    /// has no block device of its own: tmpfs, overlayfs, btrfs).
    #[arg(long, default_value_t = 256)]
    vm_io_mbps: u64,
    /// Block I/O operations per second a VM may do each way (with
    /// `--vm-io-mbps`).
    #[arg(long, default_value_t = 4000)]
    vm_io_iops: u64,
    /// uids and gids for VMs' jails, one of each per running VM, builds and
    /// microVMs alike. No account of this host may use one of them; emberd
    /// refuses to start otherwise.
    #[arg(long, default_value_t = IdRange::DEFAULT)]
    vm_id_range: IdRange,
    /// Serve endpoints as `http://<id>.DOMAIN` on one shared listener
    /// (`--endpoint-listen`) behind a wildcard DNS record, instead of one
    /// port per microVM.
    #[arg(long, requires = "endpoint_listen")]
    endpoint_domain: Option<String>,
    /// The shared endpoint listener for `--endpoint-domain`.
    #[arg(long)]
    endpoint_listen: Option<SocketAddr>,
    /// Free disk kept in the data dir, in MiB: a run, resume or build is
    /// refused below it. 2048 leaves room for what is already admitted to
    /// finish writing (a restore copies up to its VM's memory, a suspend
    /// writes device state, a build freezes layers) and for SQLite's
    /// journal, so a full disk never corrupts the store or a snapshot.
    #[arg(long, default_value_t = 2048)]
    disk_reserve_mib: u64,
    /// The most a build's log may hold, in MiB. A step whose output passes
    /// it is stopped and its build fails with the reason (the log says so
    /// once and keeps Ember's lines): a runaway `RUN` cannot fill the disk.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    build_log_max_mib: u64,
    /// Let http(s) artifacts come from loopback, private, link-local,
    /// metadata and other non-public addresses (labs, local test servers).
    /// Without it they are refused on every connection, redirects included.
    #[arg(long)]
    allow_private_artifact_hosts: bool,
    /// One non-public address http(s) artifacts may still come from (an
    /// internal mirror); repeatable.
    #[arg(long = "allow-artifact-address", value_name = "IP")]
    allow_artifact_addresses: Vec<std::net::IpAddr>,
    /// A folder file:// artifacts must resolve into, symlinks followed;
    /// repeatable. Without it, any path emberd can read.
    #[arg(long = "artifact-root", value_name = "DIR")]
    artifact_roots: Vec<PathBuf>,
    /// The S3-compatible store s3:// artifacts are fetched from (path-style
    /// addressing), e.g. http://127.0.0.1:9000. Without it, AWS S3 in
    /// --region. Credentials are emberd's own, from the usual AWS chain
    /// (AWS_ACCESS_KEY_ID…, AWS_PROFILE, the shared credentials file, …).
    /// Trusted configuration: not subject to the artifact address checks.
    #[arg(long, value_name = "URL", value_parser = parse_s3_endpoint)]
    s3_endpoint: Option<String>,
    /// A JSON file of execution role ARNs to static keys (`accessKeyId`,
    /// `secretAccessKey`, optional `sessionToken` and `expiration`), served
    /// to microVMs run with that role at 169.254.169.254 (IMDSv2). Owned by
    /// emberd's user, mode 0600 or stricter; re-read when it changes.
    #[arg(long, value_name = "FILE")]
    role_credentials: Option<PathBuf>,
    #[command(flatten)]
    blobs: blobs::BlobArgs,
    #[command(flatten)]
    metrics: metrics::MetricsArgs,
    #[command(flatten)]
    registries: registries::RegistryArgs,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(flatten)]
    api_limits: api_server::ApiLimits,
    #[command(flatten)]
    node: node::NodeArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    validate_args(&args)?;
    let roles = role_credentials(&args)?;
    // Everything emberd creates is its own alone unless it says otherwise
    // (the shared read-only images VMs' jails bind in are made readable
    // where they are handed over).
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let data_dir = std::path::absolute(&args.data_dir).context("--data-dir")?;
    let mut layout = DataDir::new(&data_dir);
    layout
        .create()
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let moved_from = layout
        .read_moved_from()
        .with_context(|| format!("reading where {} was before", data_dir.display()))?;
    let tls = load_tls(&args, &layout)?;
    // Read before anything starts: a bad token file stops emberd at once.
    let scrape_token = args
        .metrics
        .metrics_token_file
        .as_deref()
        .map(metrics::ScrapeToken::read)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let creds = credentials::load_or_create(&layout.credentials())?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| ember_store::StoreLocation::Sqlite(layout.database()));
    let postgres_tls = ember_store::PostgresTls {
        ca_file: args.store_ca_file.clone(),
        client_cert: args
            .store_client_cert
            .clone()
            .zip(args.store_client_key.clone()),
    };
    let store = ember_store::open(&location, &postgres_tls)
        .await
        .with_context(|| format!("opening the state store {location}"))?;
    tracing::info!(store = %location, "state store open");
    store.limit_live_microvms(args.cluster.cluster_max_microvms);
    let node_id = args.node.node_id()?;
    let cluster = args.cluster.start().await?;
    let address = cluster
        .as_ref()
        .and_then(|c| c.internal.as_ref().map(|(_, a)| a.clone()));
    // Before anything reads or writes microVMs: registering bumps the
    // node's epoch and takes back its rows under it.
    let node = node::register(&*store, &node_id, args.node.lease(), address)
        .await
        .with_context(|| format!("registering node {node_id} in the state store"))?;
    let recovered = builds::recover_interrupted(&*store, &layout).await?;
    if recovered > 0 {
        tracing::warn!(
            builds = recovered,
            "builds interrupted by the last shutdown marked FAILED"
        );
    }

    let assets = AssetStore::new(args.assets_dir.clone().unwrap_or_else(|| layout.assets()));
    let agent = std::path::absolute(&args.agent).context("--agent")?;
    let guest = {
        let assets = assets.clone();
        tokio::task::spawn_blocking(move || assets.ensure_guest(&agent))
            .await?
            .context("preparing the guest kernel and initramfs")?
    };
    let accel = args
        .accel
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
        .context("--accel")?;
    // Build VMs die with emberd (a restart marks their builds FAILED);
    // microVMs outlive it and are re-attached. Both are jailed, each VM in
    // its own cgroup; a host that cannot do that stops emberd here. Both
    // backends take ids from one range (each sees the other's VMs' folders)
    // so the egress guard, which both install, polices all of them.
    let mut image_roots = vec![data_dir.clone()];
    if let Some(assets) = &args.assets_dir {
        image_roots.push(std::path::absolute(assets).context("--assets-dir")?);
    }
    let io = match args.vm_io_mbps {
        0 => None,
        mbps => Some(
            IoLimits::for_path(&data_dir, mbps << 20, args.vm_io_iops)
                .context("--vm-io-mbps (pass --vm-io-mbps 0 to run VMs without a block I/O cap)")?,
        ),
    };
    let mut qemu = QemuConfig::new(layout.vm_state());
    qemu.accel = accel;
    qemu.jail = JailConfig {
        ids: args.vm_id_range,
        image_roots,
    };
    qemu.cgroup = Some(CgroupConfig {
        nest_in_own_cgroup: true,
        cpu_max_percent: 100 * u32::from(BUILD_VCPUS),
        io: io.clone(),
        ..CgroupConfig::new("ember-builds")
    });
    let hv: Arc<dyn Hypervisor> = Arc::new(
        QemuHypervisor::new(qemu.clone())
            .await
            .context("the VM backend (every VM runs jailed; see the README's requirements)")?,
    );
    let mut vm_qemu = qemu;
    vm_qemu.die_with_parent = false;
    vm_qemu.prefetch_working_set = !args.no_working_set_prefetch;
    vm_qemu.cgroup = Some(CgroupConfig {
        nest_in_own_cgroup: true,
        cpu_max_percent: args.vm_cpu_percent,
        io,
        ..CgroupConfig::new("ember")
    });
    let vm_hv: Arc<dyn Hypervisor> = Arc::new(
        QemuHypervisor::new(vm_qemu)
            .await
            .context("the microVM backend")?,
    );
    let compat_class = vm_hv.compatibility();
    store
        .set_node_compat_class(&compat_class)
        .await
        .context("recording this node's compatibility class")?;
    tracing::info!(class = %compat_class, "snapshots of this class restore here");
    if let Some(from) = &moved_from {
        relocate_images(&*vm_hv, &layout, from)?;
    }
    layout
        .record_location()
        .with_context(|| format!("recording where {} is", data_dir.display()))?;
    let blobs = blobs::SnapshotBlobs::open(
        &args.blobs,
        &artifact_limits(&args)?.sources.s3,
        Arc::clone(&vm_hv),
        &layout,
        disk_reserve(&args, &layout),
    )
    .await?;
    let builder = Builder::new(
        Arc::clone(&hv),
        BuilderConfig {
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            guest_version: guest_version(&guest)?,
            cache_dir: layout.build_cache(),
            build_memory_mib: args.build_memory_mib,
            build_vcpus: BUILD_VCPUS,
            limits: artifact_limits(&args)?,
            timeout: builds::BUILD_TIMEOUT,
        },
    )?
    .with_registry({
        let (registries, layout, assets) =
            (args.registries.clone(), layout.clone(), assets.clone());
        tokio::task::spawn_blocking(move || registries.bases(&layout, &assets)).await??
    });
    let disk = disk_reserve(&args, &layout);
    let metrics = Arc::new(metrics::Metrics::new());
    let builds = Arc::new(Builds::new(
        Arc::clone(&store),
        Arc::new(builder),
        assets.clone(),
        layout.clone(),
        builds::BuildLimits {
            concurrent: args.max_builds,
            disk,
            log_max_bytes: args.build_log_max_mib * 1024 * 1024,
        },
        Arc::clone(&metrics),
        blobs.clone(),
    ));
    let endpoint_tls = match &tls {
        Some(t) => Some(ember_proxy::EndpointTls(
            t.server_config(tls::ENDPOINT_ALPN)?,
        )),
        None => None,
    };
    let microvms = start_microvms(
        &args,
        &store,
        &layout,
        vm_hv,
        roles,
        (endpoint_tls, Arc::clone(&metrics)),
        (node_id, cluster, blobs),
    )
    .await?;
    node::spawn_keeper(Arc::clone(&store), Arc::clone(&microvms), node);
    if let Some(addr) = args.metrics.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        println!(
            "emberd metrics on {}://{}/metrics{}",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?,
            if scrape_token.is_some() {
                " (bearer token)"
            } else {
                ""
            }
        );
        let sources = (metrics, Arc::clone(&store), Arc::clone(&microvms));
        let limits = args.api_limits.clone();
        match &tls {
            Some(t) => {
                let listener = tls::TlsListener::new(listener, t.server_config(tls::API_ALPN)?)?;
                metrics::serve(listener, sources, scrape_token, limits);
            }
            None => metrics::serve(listener, sources, scrape_token, limits),
        }
    }
    let daemon = Arc::new(Daemon::new(
        store,
        builds,
        microvms,
        layout.clone(),
        args.region.clone(),
        args.account.clone(),
        args.default_egress,
    ));
    service::start_pools(&daemon).await;
    let app = service::router(daemon, Arc::new(creds));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    write_endpoint(&layout, &url)?;
    println!("emberd listening on {url}");
    tracing::info!(%url, accel = hv.accel().as_str(), data_dir = %data_dir.display(), "emberd ready");
    let limits = args.api_limits.clone();
    match &tls {
        Some(t) => {
            let listener = tls::TlsListener::new(listener, t.server_config(tls::API_ALPN)?)?;
            api_server::serve(listener, app, limits, shutdown_signal()).await
        }
        None => api_server::serve(listener, app, limits, shutdown_signal()).await,
    }
    Ok(())
}

/// The endpoint proxy and the microVMs, with the ones a previous emberd
/// left running or suspended taken back.
async fn start_microvms(
    args: &Args,
    store: &Arc<dyn StateStore>,
    layout: &DataDir,
    hv: Arc<dyn Hypervisor>,
    roles: Option<Arc<metadata::RoleCredentials>>,
    (tls, metrics): (Option<ember_proxy::EndpointTls>, Arc<metrics::Metrics>),
    (node_id, cluster, blobs): (
        String,
        Option<cluster::Cluster>,
        Option<Arc<blobs::SnapshotBlobs>>,
    ),
) -> anyhow::Result<Arc<microvms::Microvms>> {
    let (cluster_key, internal_listener, internal_tls) = match cluster {
        Some(c) => (
            Some(c.key),
            c.internal.map(|(listener, _)| listener),
            Some(c.tls),
        ),
        None => (None, None, None),
    };
    let tokens = Arc::new(match &cluster_key {
        Some(key) => key.token_key(),
        None => TokenKey::load_or_create(&layout.token_key()).context("the endpoint token key")?,
    });
    let upstream = Arc::new(microvms::VmUpstream::default());
    let peers = cluster_key
        .as_ref()
        .zip(internal_tls.as_ref())
        .map(|(key, tls)| {
            Arc::new(cluster::Peers::new(
                Arc::clone(key),
                Arc::clone(&tls.client),
                node_id.clone(),
                Arc::clone(store),
            ))
        });
    let proxy_upstream: Arc<dyn ember_proxy::Upstream> = match &peers {
        Some(peers) => Arc::new(cluster::ClusterUpstream::new(
            Arc::clone(&upstream),
            Arc::clone(peers),
            Arc::clone(store),
            node_id.clone(),
        )),
        None => Arc::clone(&upstream) as _,
    };
    let default_port = if tls.is_some() { 443 } else { 80 };
    let proxy = Arc::new(Proxy::new(
        Arc::clone(&tokens),
        proxy_upstream,
        ProxyConfig {
            bind_ip: args.endpoint_ip,
            tls,
            observer: ember_proxy::Observer::new(Arc::clone(&metrics) as _),
            idle_timeout: endpoint::idle_timeout(
                args.endpoint_idle_timeout,
                args.min_idle_seconds,
            )?,
            max_connections_per_vm: args.max_connections_per_vm,
            max_connections_per_listener: args.max_connections_per_listener,
            ..Default::default()
        },
    ));
    let endpoint = match (&args.endpoint_domain, args.endpoint_listen) {
        (Some(domain), Some(listen)) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("--endpoint-listen {listen}"))?;
            let port = listener.local_addr()?.port();
            let (shared, domain_owned) = (Arc::clone(&proxy), domain.clone());
            tokio::spawn(async move { shared.serve_shared(listener, &domain_owned).await });
            microvms::EndpointMode::Wildcard {
                domain: domain.clone(),
                public_url_suffix: if port == default_port {
                    String::new()
                } else {
                    format!(":{port}")
                },
            }
        }
        _ => microvms::EndpointMode::PerVmPort,
    };
    let microvms = microvms::Microvms::new(
        Arc::clone(store),
        layout.clone(),
        hv,
        proxy,
        tokens,
        microvms::MicrovmsConfig {
            min_idle_seconds: args.min_idle_seconds,
            compact_after_seconds: args.compact_after_seconds,
            endpoint,
            metadata: Arc::new(metadata::Metadata::new(
                args.region.clone(),
                args.account.clone(),
                roles,
            )),
            capacity: microvms::Capacity {
                max_live: args.max_microvms,
                max_running: args.max_running_microvms,
                memory_reserve_mib: args.memory_reserve_mib,
                disk: disk_reserve(args, layout),
            },
            metrics,
            warm_suspended_bytes: args
                .warm_suspended_mib
                .map(|mib| mib.saturating_mul(1 << 20))
                .unwrap_or_else(microvms::default_warm_budget_bytes),
            warm_pool: args.warm_pool,
            node_id,
            peers,
            blobs,
        },
    );
    upstream.attach(&microvms);
    if let (Some(listener), Some(key), Some(tls)) = (internal_listener, cluster_key, internal_tls) {
        let tls = Arc::clone(&tls.server);
        cluster::serve_internal(
            listener,
            tls,
            key,
            Arc::clone(&microvms),
            Arc::clone(&upstream),
        );
    }
    let recovered = microvms.recover().await?;
    if recovered > 0 {
        tracing::info!(
            microvms = recovered,
            "took back the microVMs of the last run"
        );
    }
    microvms.start_background();
    Ok(microvms)
}

/// Free space kept in the data dir, for builds and microVMs alike.
fn disk_reserve(args: &Args, layout: &DataDir) -> microvms::DiskReserve {
    microvms::DiskReserve {
        dir: layout.root().to_path_buf(),
        reserve_mib: args.disk_reserve_mib,
    }
}

/// vCPUs of a build VM; its cgroup allows that many cores.
const BUILD_VCPUS: u8 = 2;

/// Before any VM or build reads them: the snapshots and layers of a data
/// dir that moved name the files they are built on at the old place.
fn relocate_images(hv: &dyn Hypervisor, layout: &DataDir, from: &Path) -> anyhow::Result<()> {
    let to = layout.root();
    let mut moved = 0;
    for dir in [
        layout.root().join("images"),
        layout.build_cache(),
        layout.microvms(),
        layout.forks(),
    ] {
        moved += hv.relocate_images(&dir, from, to).with_context(|| {
            format!(
                "the data dir moved from {} to {}, and the disk images in {} could not be \
                 pointed at their new place (move it back to start emberd)",
                from.display(),
                to.display(),
                dir.display()
            )
        })?;
    }
    tracing::warn!(from = %from.display(), to = %to.display(), images = moved, "the data dir moved; its disk images now name their backing files at the new place");
    Ok(())
}

fn validate_args(args: &Args) -> anyhow::Result<()> {
    if args.account.len() != 12 || !args.account.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("--account must be 12 digits, got {:?}", args.account);
    }
    let region_ok = args.region.split('-').count() >= 3
        && args
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        anyhow::bail!("--region must look like us-east-1, got {:?}", args.region);
    }
    if !(256..=16384).contains(&args.build_memory_mib) {
        anyhow::bail!("--build-memory-mib must be 256..=16384");
    }
    args.tls.check_plain(&listen_ips(args))?;
    Ok(())
}

/// Every address emberd listens on: the API, per-VM endpoints, the
/// wildcard-domain endpoint listener.
fn listen_ips(args: &Args) -> Vec<std::net::IpAddr> {
    let shared = args.endpoint_listen.map(|a| a.ip());
    let metrics = args.metrics.metrics_listen.map(|a| a.ip());
    [
        Some(args.listen.ip()),
        Some(args.endpoint_ip),
        shared,
        metrics,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `--tls-*`: the pair loaded (or made), its fingerprint printed, and
/// reloaded on SIGHUP from then on.
fn load_tls(args: &Args, layout: &DataDir) -> anyhow::Result<Option<Arc<tls::Tls>>> {
    let names = tls::listener_names(&listen_ips(args), args.endpoint_domain.as_deref());
    let Some(tls) = tls::Tls::from_args(&args.tls, &layout.tls(), &names)? else {
        return Ok(None);
    };
    let tls = Arc::new(tls);
    println!("{}", tls.describe());
    tls.reload_on_sighup().context("SIGHUP handler")?;
    Ok(Some(tls))
}

/// `--role-credentials`, checked now: a file others can read, or one
/// that does not parse, stops emberd before it serves anything.
fn role_credentials(args: &Args) -> anyhow::Result<Option<Arc<metadata::RoleCredentials>>> {
    let Some(path) = &args.role_credentials else {
        return Ok(None);
    };
    let roles = metadata::RoleCredentials::load(path).context("--role-credentials")?;
    Ok(Some(Arc::new(roles)))
}

fn parse_s3_endpoint(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("an http(s) URL with a host, e.g. http://127.0.0.1:9000".to_string());
    }
    Ok(value.to_string())
}

/// Where artifacts may come from (`--allow-private-artifact-hosts`,
/// `--allow-artifact-address`, `--artifact-root`).
fn artifact_limits(args: &Args) -> anyhow::Result<ember_artifact::Limits> {
    let sources = ember_artifact::SourcePolicy {
        allow_private_hosts: args.allow_private_artifact_hosts,
        allowed_addresses: args.allow_artifact_addresses.clone(),
        file_roots: Vec::new(),
        s3: ember_artifact::S3Settings {
            endpoint: args.s3_endpoint.clone(),
            region: args.region.clone(),
        },
    }
    .with_file_roots(&args.artifact_roots)
    .context("--artifact-root")?;
    if sources.allow_private_hosts {
        tracing::warn!("--allow-private-artifact-hosts: artifacts may be fetched from this host's own and private addresses");
    }
    Ok(ember_artifact::Limits {
        sources,
        ..Default::default()
    })
}

/// Kernel package and initramfs content: a change to either (a new agent)
/// invalidates the build cache.
fn guest_version(guest: &ember_assets::GuestAssets) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(&guest.initramfs)
        .with_context(|| format!("reading {}", guest.initramfs.display()))?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}+{hex}", guest.kernel_version))
}

fn write_endpoint(layout: &DataDir, url: &str) -> anyhow::Result<()> {
    let path = layout.endpoint_file();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
    // Builds in flight die with their VMs; the next start marks them FAILED.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Seconds since the epoch, as the API's timestamps.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
