//! `ember-bench`: measures Ember on this host and prints one JSON object
//! per result. Figures that are compared (cold boot vs restore) are taken
//! in the same run, so their ratio survives a noisy machine.

mod cluster;
mod cold_resume;
mod density;
mod edge;
mod hostile_guest;
mod image_build;
mod local_registry;
mod microvm;
mod oci_image;
mod procfs;
mod proxy_overhead;
mod restore;
mod store;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "ember-bench")]
struct Args {
    #[arg(long, env = "EMBER_DATA_DIR", default_value = "build/data")]
    data_dir: PathBuf,
    #[arg(
        long,
        env = "EMBER_AGENT_BIN",
        default_value = "target/x86_64-unknown-linux-gnu/guest/ember-agent"
    )]
    agent: PathBuf,
    /// The test-only agent that attacks its host (`make hostile-agent`).
    #[arg(
        long,
        env = "EMBER_HOSTILE_AGENT_BIN",
        default_value = "target/hostile/x86_64-unknown-linux-gnu/guest/ember-agent"
    )]
    hostile_agent: PathBuf,
    #[arg(long, env = "EMBER_ACCEL", default_value = "auto")]
    accel: String,
    /// Repetitions per figure; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Idle running microVMs the microvm bench starts at once.
    #[arg(long, default_value_t = 50)]
    running_vms: usize,
    /// Suspended microVMs the microvm bench fills the host with.
    #[arg(long, default_value_t = 1000)]
    suspended_vms: usize,
    /// The density bench stops at this many idle microVMs.
    #[arg(long, default_value_t = 400)]
    density_max: usize,
    /// image_build: only this example (hello-http, python-counter,
    /// hello-oci); repeatable. Default: all.
    #[arg(long = "example", value_name = "NAME")]
    examples: Vec<String>,
    /// The store bench's Postgres: an empty database it may fill (the
    /// SQLite figures are taken either way).
    #[arg(long, env = "EMBER_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Which benchmarks to run (default: all but density, which fills
    /// the host for minutes).
    #[arg(value_parser = [
        "restore",
        "image_build",
        "microvm",
        "edge",
        "hostile_guest",
        "density",
        "store",
        "cluster",
    ])]
    only: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ember::api_client::install_crypto();
    let args = Args::parse();
    let accel = args.accel.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let wants = |b: &str| args.only.is_empty() || args.only.iter().any(|o| o == b);
    if wants("restore") {
        let line = restore::run(&args.data_dir, &args.agent, accel, args.runs.max(1)).await?;
        println!("{line}");
    }
    if wants("image_build") {
        for example in image_build::EXAMPLES
            .iter()
            .filter(|e| args.examples.is_empty() || args.examples.iter().any(|n| n == e.name))
        {
            let line = image_build::run(&args.data_dir, &args.agent, accel, example).await?;
            println!("{line}");
        }
    }
    let opts = microvm::Opts {
        runs: args.runs.max(1),
        running_vms: args.running_vms,
        suspended_vms: args.suspended_vms,
        accel: args.accel.clone(),
    };
    if wants("microvm") {
        let line = microvm::run(&args.data_dir, &args.agent, &opts).await?;
        println!("{line}");
    }
    if wants("edge") {
        let line = edge::run(&args.data_dir, &args.agent, &opts).await?;
        println!("{line}");
    }
    if wants("cluster") {
        let line = cluster::run(&args.data_dir, &args.agent, &opts).await?;
        println!("{line}");
    }
    if args.only.iter().any(|o| o == "density") {
        let line = density::run(&args.data_dir, &args.agent, &opts, args.density_max).await?;
        println!("{line}");
    }
    if wants("store") {
        let line = store::run(&args.data_dir, args.postgres_url.as_deref()).await?;
        println!("{line}");
    }
    if wants("hostile_guest") {
        let line = hostile_guest::run(&args.data_dir, &args.hostile_agent, &args.accel).await?;
        println!("{line}");
    }
    Ok(())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
