//! `ember`: the operator's command-line tool.

use ember::api_client;
mod demo;
mod image;
mod microvm;
mod node;
mod shell;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Self-hosted Lambda MicroVMs")]
struct Cli {
    /// Ember's data directory (assets, VM runtime files, snapshots).
    #[arg(
        long,
        env = "EMBER_DATA_DIR",
        default_value = "build/data",
        global = true
    )]
    data_dir: PathBuf,
    /// The static guest agent binary packed into the initramfs.
    #[arg(
        long,
        env = "EMBER_AGENT_BIN",
        default_value = "target/x86_64-unknown-linux-gnu/guest/ember-agent",
        global = true
    )]
    agent: PathBuf,
    /// emberd's URL; default: the one it wrote to DATA_DIR/endpoint.
    #[arg(long, env = "EMBER_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// Trust only these PEM certificates for https (emberd's
    /// `--tls-self-signed` one is DATA_DIR/tls/cert.pem).
    #[arg(long, env = "AWS_CA_BUNDLE", value_name = "FILE", global = true)]
    ca_bundle: Option<PathBuf>,
    /// Region to sign requests for.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1", global = true)]
    region: String,
    /// Accelerator: auto (probe the host), kvm or tcg.
    #[arg(long, env = "EMBER_ACCEL", default_value = "auto", global = true)]
    accel: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and build the guest kernel, initramfs and base root filesystem.
    Setup {
        /// Also build the debian12-minimal base (debootstrap: needs root,
        /// takes a minute or more the first time).
        #[arg(long)]
        debian: bool,
    },
    /// Boot a microVM, run a process in it, snapshot it, restore the
    /// snapshot in a new VM and show that the process and its state survived.
    Demo,
    /// Build and manage microVM images through a running emberd.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The emberd nodes sharing one store: list, drain, undrain.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Run a microVM from an image (restored from its snapshot).
    Run(microvm::RunArgs),
    /// List microVMs.
    Ls {
        /// Include TERMINATED ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Show one microVM.
    Get { microvm: String },
    /// Suspend a microVM (memory and disk kept on disk, no process).
    Suspend {
        microvm: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Resume a suspended microVM.
    Resume {
        microvm: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// New microVMs that start from a running microVM's current memory
    /// and disk (Ember's own, not in the AWS API). Prints them as JSON.
    Fork {
        microvm: String,
        /// How many (1 to 16).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Return at once (PENDING) instead of waiting for RUNNING.
        #[arg(long)]
        no_wait: bool,
    },
    /// Terminate a microVM and remove its files.
    Rm {
        microvm: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// One HTTP request to a microVM's endpoint, with a fresh token.
    Curl(microvm::CurlArgs),
    /// Mint an endpoint token (10 minutes) and print it.
    Token {
        microvm: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// An interactive shell in a microVM run with --shell (SHELL_INGRESS).
    /// Exits with the shell's exit code.
    Shell { microvm: String },
    /// The app's stdout and stderr.
    Logs {
        microvm: String,
        /// Keep printing until the microVM is terminated.
        #[arg(short, long)]
        follow: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    api_client::install_crypto();
    let cli = Cli::parse();
    let accel = cli
        .accel
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
        .context("--accel")?;
    match cli.command {
        Command::Setup { debian } => {
            let assets = demo::prepare_assets(&cli.data_dir, &cli.agent).await?;
            if debian {
                let base = demo::prepare_debian_base(&cli.data_dir).await?;
                let both = serde_json::json!({"guest": assets, "debian12_minimal": base});
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&assets)?);
            }
        }
        Command::Demo => demo::run(&cli.data_dir, &cli.agent, accel).await?,
        command => {
            let client = api_client::ApiClient::from_data_dir(
                &cli.data_dir,
                cli.endpoint.as_deref(),
                &cli.region,
            )?
            .with_ca_bundle(cli.ca_bundle.as_deref())?;
            api_command(&client, command).await?
        }
    }
    Ok(())
}

async fn api_command(client: &api_client::ApiClient, command: Command) -> anyhow::Result<()> {
    use microvm::Transition;
    match command {
        Command::Image(cmd) => image::run(client, cmd).await,
        Command::Node(cmd) => node::run(client, cmd).await,
        Command::Run(a) => microvm::run(client, a).await,
        Command::Ls { all } => microvm::list(client, all).await,
        Command::Get { microvm } => microvm::show(client, &microvm).await,
        Command::Suspend { microvm, no_wait } => {
            microvm::transition(client, &microvm, Transition::Suspend, !no_wait).await
        }
        Command::Resume { microvm, no_wait } => {
            microvm::transition(client, &microvm, Transition::Resume, !no_wait).await
        }
        Command::Fork {
            microvm,
            count,
            no_wait,
        } => microvm::fork(client, &microvm, count, !no_wait).await,
        Command::Rm { microvm, no_wait } => {
            microvm::transition(client, &microvm, Transition::Terminate, !no_wait).await
        }
        Command::Curl(a) => microvm::curl(client, a).await,
        Command::Token { microvm, port } => {
            println!("{}", microvm::token(client, &microvm, port).await?);
            Ok(())
        }
        Command::Logs { microvm, follow } => microvm::logs(client, &microvm, follow).await,
        Command::Shell { microvm } => {
            let code = shell::run(client, &microvm).await?;
            std::process::exit(code);
        }
        Command::Setup { .. } | Command::Demo => Ok(()),
    }
}
