//! The image configuration a build produces: what a microVM of the image
//! runs, as whom, where, with which environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The shell Docker uses for shell-form commands when SHELL is not given.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

/// The configuration of the built image. It holds only what the Dockerfile
/// says; the builder lays it over the base image's own configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// ENV in order of first appearance; a later ENV of the same key replaces
    /// the value in place. ARG values are not part of it.
    pub env: Vec<(String, String)>,
    /// The last WORKDIR, `/` when none.
    pub workdir: String,
    pub user: Option<String>,
    /// In order of appearance, each port once (TCP and UDP alike).
    pub exposed_ports: Vec<u16>,
    /// Already an argv: a shell-form ENTRYPOINT is the SHELL plus its text.
    /// `Some` with `cmd: None` means the base image's CMD must be dropped,
    /// as Docker does when a Dockerfile sets ENTRYPOINT without CMD.
    pub entrypoint: Option<Vec<String>>,
    /// Already an argv, like `entrypoint`.
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// The SHELL in force at the end (for shell-form commands run later).
    pub shell: Vec<String>,
    pub stop_signal: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            workdir: "/".to_string(),
            user: None,
            exposed_ports: Vec::new(),
            entrypoint: None,
            cmd: None,
            labels: BTreeMap::new(),
            shell: default_shell(),
            stop_signal: None,
        }
    }
}

impl ImageConfig {
    /// The argv a microVM of this image starts, by Docker's rules: the
    /// ENTRYPOINT followed by the CMD. That one concatenation covers Docker's
    /// whole table: exec-form ENTRYPOINT gets the CMD as arguments; a
    /// shell-form ENTRYPOINT is `sh -c TEXT`, so the CMD words only become
    /// `$0 $1 ...` the text never uses (Docker's "ignores CMD"); CMD alone
    /// runs as is. Within one Dockerfile an ENTRYPOINT does not drop a CMD
    /// written before it (Docker only resets the CMD inherited from the base
    /// image). `None` when there is nothing to run.
    pub fn command(&self) -> Option<Vec<String>> {
        let argv: Vec<String> = self
            .entrypoint
            .iter()
            .chain(self.cmd.iter())
            .flatten()
            .cloned()
            .collect();
        (!argv.is_empty()).then_some(argv)
    }
}
