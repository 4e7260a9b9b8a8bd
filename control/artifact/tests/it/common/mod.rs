//! Helpers shared by the integration tests: zips built with the `zip`
//! writer, and a minimal HTTP server on a real socket.
#![allow(dead_code)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    /// Raw external attributes (mode << 16), for types the writer won't set.
    FileAttrs(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub fn zip_bytes(items: &[Item]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for item in items {
        match item {
            Item::File(name, data) => {
                zip.start_file(*name, opts).unwrap();
                zip.write_all(data).unwrap();
            }
            Item::FileMode(name, data, mode) => {
                zip.start_file(*name, opts.unix_permissions(*mode)).unwrap();
                zip.write_all(data).unwrap();
            }
            Item::FileAttrs(name, data, attrs) => {
                zip.start_file(*name, opts.external_attributes(*attrs))
                    .unwrap();
                zip.write_all(data).unwrap();
            }
            Item::Dir(name) => zip.add_directory(*name, opts).unwrap(),
            Item::Symlink(name, target) => zip.add_symlink(*name, *target, opts).unwrap(),
        }
    }
    zip.finish().unwrap().into_inner()
}

/// A work directory with a sentinel directory beside the destination:
/// tests assert the sentinel stays empty, i.e. nothing escaped `dest`.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sentinel")).unwrap();
        Work { dir }
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("work/dest")
    }

    pub fn write_zip(&self, items: &[Item]) -> PathBuf {
        let path = self.dir.path().join("app.zip");
        std::fs::write(&path, zip_bytes(items)).unwrap();
        std::fs::create_dir_all(self.dir.path().join("work")).unwrap();
        path
    }

    /// Nothing but `dest` may appear in the work dir, and the sentinel
    /// stays empty.
    pub fn assert_contained(&self) {
        let sentinel: Vec<_> = std::fs::read_dir(self.dir.path().join("sentinel"))
            .unwrap()
            .collect();
        assert!(
            sentinel.is_empty(),
            "something escaped into the sentinel dir"
        );
        let work = self.dir.path().join("work");
        if work.exists() {
            for item in std::fs::read_dir(&work).unwrap() {
                assert_eq!(
                    item.unwrap().file_name(),
                    "dest",
                    "stray file in the work dir"
                );
            }
        }
    }
}

pub fn relative_files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push(path.clone());
        if meta.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

pub struct Response {
    pub path: &'static str,
    pub status: u16,
    pub body: Vec<u8>,
    /// Omit Content-Length and end the body by closing the connection.
    pub no_length: bool,
    /// A `Location` header (for redirects).
    pub location: Option<String>,
}

impl Response {
    pub fn ok(path: &'static str, body: Vec<u8>) -> Response {
        Response {
            path,
            status: 200,
            body,
            no_length: false,
            location: None,
        }
    }

    pub fn redirect(path: &'static str, location: String) -> Response {
        Response {
            path,
            status: 302,
            body: Vec::new(),
            no_length: false,
            location: Some(location),
        }
    }
}

/// A server on a real socket, counting the connections it accepted: a
/// refused download must not have reached it at all.
pub struct Server {
    /// `http://ip:port`
    pub base: String,
    pub addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serves the given responses (anything else: 404) on 127.0.0.1 until the
/// test ends. Returns the base URL.
pub async fn serve(responses: Vec<Response>) -> String {
    serve_on("127.0.0.1", responses).await.base
}

/// Serves the given responses on `ip` (any port).
pub async fn serve_on(ip: &str, responses: Vec<Response>) -> Server {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let responses = std::sync::Arc::new(responses);
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let found = responses.iter().find(|r| r.path == path);
                let (status, body, no_length, location) = match found {
                    Some(r) => (
                        r.status,
                        r.body.as_slice(),
                        r.no_length,
                        r.location.as_deref(),
                    ),
                    None => (404, b"not found".as_slice(), false, None),
                };
                let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                if !no_length {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                if let Some(location) = location {
                    head.push_str(&format!("Location: {location}\r\n"));
                }
                head.push_str("\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Server {
        base: format!("http://{addr}"),
        addr,
        connections,
    }
}
