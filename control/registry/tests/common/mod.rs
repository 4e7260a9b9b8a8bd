//! A real `docker-registry` on a free port, and OCI layouts pushed to it
//! with `skopeo`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub mod token;

pub const USER: &str = "builder";
pub const PASSWORD: &str = "s3cret-pass";

pub struct Registry {
    pub port: u16,
    pub root: tempfile::TempDir,
    log: PathBuf,
    child: Child,
    creds: bool,
}

pub enum Auth<'a> {
    Anonymous,
    Htpasswd,
    /// Bearer tokens from `realm`, signed by a key `pki`'s CA certified.
    Token {
        realm: String,
        pki: &'a token::Pki,
    },
}

impl Registry {
    pub fn start(auth: Auth<'_>, tls: Option<&token::Pki>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = root.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(pki) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.leaf_cert.display(),
                pki.leaf_key.display()
            ));
        }
        let creds = !matches!(auth, Auth::Anonymous);
        if let Auth::Token { realm, pki } = &auth {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token::SERVICE,
                token::ISSUER,
                pki.ca_cert.display()
            ));
        }
        if let Auth::Htpasswd = auth {
            let htpasswd = root.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ember-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = root.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = root.path().join("registry.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/install-deps.sh installs it)");
        let registry = Self {
            port,
            root,
            log,
            child,
            creds,
        };
        // Readiness, not timing: wait until it accepts, however long that is
        // within reason.
        for _ in 0..600 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry never listened: {}", registry.log());
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times a blob was fetched (GET, not skopeo's HEAD).
    pub fn blob_gets(&self, repository: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repository}/blobs/{digest} ");
        self.log().matches(&needle).count()
    }

    /// Pushes `layout:tag` as `repository:tag`; `all` pushes an index whole.
    pub fn push(&self, layout: &Path, tag: &str, repository: &str, all: bool) {
        let mut args = vec!["--preserve-digests"];
        if all {
            args.push("--all");
        }
        self.push_with(layout, tag, repository, &args);
    }

    pub fn push_with(&self, layout: &Path, tag: &str, repository: &str, args: &[&str]) {
        let mut command = Command::new("skopeo");
        command.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        command.args(args);
        if self.creds {
            command.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        let out = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repository}:{tag}", self.host()))
            .output()
            .expect("skopeo (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The manifest as the registry serves it, read by skopeo.
    pub fn raw_manifest(&self, repository: &str, tag: &str) -> serde_json::Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{repository}:{tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The registry's stored copy of a blob (manifests are blobs too).
    pub fn stored_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.root
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A tar holding one file.
pub fn tar_layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    builder.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An OCI image layout being written by hand.
pub struct Layout {
    pub dir: tempfile::TempDir,
    refs: Vec<serde_json::Value>,
}

pub struct Layer {
    pub tar: Vec<u8>,
    pub gzip: bool,
}

impl Layer {
    pub fn blob(&self) -> Vec<u8> {
        if self.gzip {
            gzip(&self.tar)
        } else {
            self.tar.clone()
        }
    }
}

impl Layout {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Self { dir, refs: vec![] }
    }

    pub fn blob(&self, bytes: &[u8]) -> serde_json::Value {
        let digest = digest_of(bytes);
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::write(self.dir.path().join("blobs/sha256").join(hex), bytes).unwrap();
        json!({"digest": digest, "size": bytes.len()})
    }

    fn described(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let mut d = self.blob(bytes);
        d["mediaType"] = json!(media_type);
        d
    }

    /// Writes an image (config `run` plus the layers) and returns its
    /// manifest's descriptor.
    pub fn image(&self, arch: &str, run: serde_json::Value, layers: &[Layer]) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest_of(&l.tar)).collect();
        let config = json!({
            "architecture": arch, "os": "linux", "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.described(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let layers: Vec<_> = layers
            .iter()
            .map(|l| {
                let media_type = if l.gzip {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                self.described(media_type, &l.blob())
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        let mut d = self.described(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    }

    pub fn index(&self, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let index = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.described(
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )
    }

    /// Names `descriptor` `tag` in the layout's index.json.
    pub fn tag(&mut self, tag: &str, descriptor: &serde_json::Value) {
        let mut d = descriptor.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(d);
        let index = json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(self.dir.path().join("index.json"), index.to_string()).unwrap();
    }
}

impl Layer {
    pub fn clone_layer(&self) -> Layer {
        Layer {
            tar: self.tar.clone(),
            gzip: self.gzip,
        }
    }
}
