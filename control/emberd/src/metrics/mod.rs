//! What an operator watches: `--metrics-listen ADDR` serves Prometheus
//! text at `GET /metrics` (`serve.rs`).
//!
//! `prometheus-client` rather than `metrics` + its exporter: the registry
//! is a value emberd owns and passes where it is needed (no global
//! recorder), families are typed label sets, and it brings no HTTP server
//! of its own (axum serves it, as it serves the API).
//!
//! Events (lifecycle latencies, proxy answers and bytes) are recorded as
//! they happen through [`Metrics`]; states, per-VM cgroup usage and
//! capacity are read at scrape time (`scrape.rs`), so they cannot drift
//! from the store and the cgroups.

mod scrape;
mod serve;

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use serve::{serve, ScrapeToken};

/// `--metrics-*`.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at ADDR/metrics (port 0 picks a free
    /// one), over TLS when the API is. Off by default. Off loopback it
    /// needs TLS (or --insecure-http), like the API.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Only scrapes with `Authorization: Bearer <the file's token>` are
    /// answered (at least 16 characters; Prometheus' `authorization:
    /// credentials_file`).
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    pub metrics_token_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// The status class: "2xx", "4xx", ...
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MicrovmLabel {
    microvm_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;

/// Families read at scrape time; cleared and refilled by each scrape, so
/// a terminated VM's series disappear.
#[derive(Default)]
struct Sampled {
    microvms: Family<StateLabel, Gauge>,
    images: Family<StateLabel, Gauge>,
    builds: Family<StateLabel, Gauge>,
    vm_cpu: Family<MicrovmLabel, FloatCounter>,
    vm_memory: Family<MicrovmLabel, Gauge>,
    capacity_memory: Family<KindLabel, Gauge>,
    capacity_slots: Family<KindLabel, Gauge>,
    capacity_microvms: Family<KindLabel, Gauge>,
    warm_microvms: Gauge,
    warm_memory: Family<KindLabel, Gauge>,
}

/// Every metric emberd exports, and the registry that encodes them.
pub struct Metrics {
    run: Histogram,
    suspend: Histogram,
    resume: Histogram,
    auto_resume_first_byte: Histogram,
    build: Family<ResultLabel, Histogram>,
    requests: Family<StatusLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    sampled: Sampled,
    /// One scrape at a time: it clears and refills `sampled`.
    registry: Mutex<Registry>,
}

fn lifecycle_histogram() -> Histogram {
    // 50 ms (a restore on KVM) to ~100 s (a slow hook under TCG).
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

fn build_histogram() -> Histogram {
    // 1 s (a cached rebuild) to ~34 min (the build timeout's range).
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            run: lifecycle_histogram(),
            suspend: lifecycle_histogram(),
            resume: lifecycle_histogram(),
            auto_resume_first_byte: lifecycle_histogram(),
            build: Family::new_with_constructor(build_histogram),
            requests: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            sampled: Sampled::default(),
            registry: Mutex::new(Registry::default()),
        };
        m.register();
        m
    }

    fn register(&self) {
        let mut r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &self.sampled;
        r.register("ember_microvms", "MicroVMs by state", s.microvms.clone());
        r.register("ember_images", "Images by state", s.images.clone());
        r.register("ember_builds", "Image builds by state", s.builds.clone());
        let secs = |r: &mut Registry, name: &str, help: &str, h: &Histogram| {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        };
        secs(
            &mut r,
            "ember_microvm_run_duration",
            "RunMicrovm: restore until the run hook said yes",
            &self.run,
        );
        secs(
            &mut r,
            "ember_microvm_suspend_duration",
            "Suspending a microVM: hook, logs, snapshot",
            &self.suspend,
        );
        secs(
            &mut r,
            "ember_microvm_resume_duration",
            "Resuming a microVM: restore until the resume hook said yes",
            &self.resume,
        );
        secs(
            &mut r,
            "ember_microvm_auto_resume_first_byte",
            "An endpoint request that found its microVM suspended (autoResumeEnabled), until the app's first response byte",
            &self.auto_resume_first_byte,
        );
        r.register_with_unit(
            "ember_build_duration",
            "Image builds, from leaving the queue until done",
            Unit::Seconds,
            self.build.clone(),
        );
        r.register(
            "ember_endpoint_requests",
            "Endpoint requests answered, by status class",
            self.requests.clone(),
        );
        r.register_with_unit(
            "ember_endpoint",
            "Bytes between endpoint clients and the proxy (upgraded connections included)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "ember_endpoint_errors",
            "Endpoint requests the proxy answered itself, by x-aws-proxy-error code",
            self.errors.clone(),
        );
        r.register_with_unit(
            "ember_microvm_cpu",
            "Host CPU time used by a running microVM (its cgroup, else its QEMU process)",
            Unit::Seconds,
            s.vm_cpu.clone(),
        );
        r.register(
            "ember_warm_suspended_microvms",
            "SUSPENDED microVMs parked in place (their QEMU kept, memory released)",
            s.warm_microvms.clone(),
        );
        r.register_with_unit(
            "ember_warm_suspended_memory",
            "Host memory parked microVMs hold (held) and may hold in all (budget)",
            Unit::Bytes,
            s.warm_memory.clone(),
        );
        r.register_with_unit(
            "ember_microvm_memory",
            "Memory charged to a running microVM's cgroup (else its QEMU's RSS)",
            Unit::Bytes,
            s.vm_memory.clone(),
        );
        r.register_with_unit(
            "ember_capacity_memory",
            "Host memory: available now, the RAM of microVMs holding a running slot, and what is kept for the host",
            Unit::Bytes,
            s.capacity_memory.clone(),
        );
        r.register(
            "ember_capacity_running_slots",
            "Running microVM slots: the limit and those in use",
            s.capacity_slots.clone(),
        );
        r.register(
            "ember_capacity_microvms",
            "MicroVMs held (running or suspended): the limit and those in use",
            s.capacity_microvms.clone(),
        );
    }

    pub fn observe_run(&self, took: Duration) {
        self.run.observe(took.as_secs_f64());
    }

    pub fn observe_suspend(&self, took: Duration) {
        self.suspend.observe(took.as_secs_f64());
    }

    pub fn observe_resume(&self, took: Duration) {
        self.resume.observe(took.as_secs_f64());
    }

    pub fn observe_auto_resume_first_byte(&self, took: Duration) {
        self.auto_resume_first_byte.observe(took.as_secs_f64());
    }

    /// A build finished: `result` is its final state (SUCCESSFUL, FAILED).
    pub fn observe_build(&self, result: &str, took: Duration) {
        self.build
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl ember_proxy::ProxyObserver for Metrics {
    fn answered(&self, status: hyper::StatusCode, proxy_error: Option<&str>) {
        let class = format!("{}xx", status.as_u16() / 100);
        self.requests
            .get_or_create(&StatusLabel { status: class })
            .inc();
        if let Some(code) = proxy_error {
            // The proxy's own codes: a fixed, small set of label values.
            self.errors
                .get_or_create(&CodeLabel {
                    code: code.to_string(),
                })
                .inc();
        }
    }

    fn bytes_in(&self, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(n);
    }

    fn bytes_out(&self, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(n);
    }
}
