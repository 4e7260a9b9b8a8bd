//! `ember node ls|drain|undrain`: the nodes sharing one store, through
//! any one of them (Ember's own `/ember/v1/nodes`).

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

use crate::api_client::ApiClient;

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Every node: state, epoch, lease left, live microVMs.
    Ls {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Place no new microVMs on NODE; the ones it runs go on.
    Drain { node: String },
    /// Place microVMs on NODE again.
    Undrain { node: String },
}

pub async fn run(client: &ApiClient, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls { json } => {
            let out = client
                .call(Method::GET, "/ember/v1/nodes", &[], None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            let nodes = out["nodes"]
                .as_array()
                .context("the node list answered without its nodes")?;
            println!(
                "{:<24} {:<9} {:>6} {:>10} {:>8} {:>9}  {:<21}  REASON",
                "NODE", "STATE", "EPOCH", "LEASE", "MICROVMS", "FREE_MIB", "INTERNAL"
            );
            for n in nodes {
                println!("{}", row(n));
            }
            Ok(())
        }
        NodeCommand::Drain { node } => set(client, &node, "drain").await,
        NodeCommand::Undrain { node } => set(client, &node, "undrain").await,
    }
}

async fn set(client: &ApiClient, node: &str, verb: &str) -> anyhow::Result<()> {
    let path = format!("/ember/v1/nodes/{node}/{verb}");
    let out = client.call(Method::POST, &path, &[], None).await?;
    println!("{}", row(&out));
    Ok(())
}

fn row(n: &Value) -> String {
    let id = n["nodeId"].as_str().unwrap_or("?");
    let me = if n["thisNode"].as_bool() == Some(true) {
        "*"
    } else {
        ""
    };
    let lease = match n["leaseSecondsLeft"].as_f64() {
        Some(s) if s >= 0.0 => format!("{s:.0}s"),
        Some(s) => format!("-{:.0}s", -s),
        None => "?".into(),
    };
    format!(
        "{:<24} {:<9} {:>6} {:>10} {:>8} {:>9}  {:<21}  {}",
        format!("{id}{me}"),
        n["state"].as_str().unwrap_or("?"),
        n["epoch"].as_u64().unwrap_or(0),
        lease,
        n["liveMicrovms"].as_u64().unwrap_or(0),
        n["freeMemoryMib"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |m| m.to_string()),
        n["internalAddress"].as_str().unwrap_or("-"),
        n["stateReason"].as_str().unwrap_or("")
    )
}
