//! An unpacked build context: its Dockerfile, source selection for `COPY`
//! and `ADD`, and content digests.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::copy_dir::open_nofollow;
use crate::copy_tar::{self, CopyTar};
use crate::ignore::IgnoreRules;
use crate::pattern;
use crate::ArtifactError;

/// Largest Dockerfile (and `.dockerignore`) read.
pub const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;
/// Symlinks followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// What a tree entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64 },
    Dir,
    Symlink { target: PathBuf },
}

/// One file, directory or symlink of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context's root (empty for the root itself).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
}

/// One `COPY`/`ADD` source after pattern expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The path as matched, relative to the root; its last component is
    /// the name a file lands under in a destination directory.
    pub name: PathBuf,
    /// The entry itself, after following a symlink the name may be.
    /// Always a file or a directory.
    pub source: Entry,
    /// For a directory: everything inside it, `.dockerignore` applied, in
    /// name order. Empty for a file.
    pub contents: Vec<Entry>,
}

/// An unpacked artifact tree.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    total_bytes: u64,
    ignore: IgnoreRules,
}

impl Context {
    /// An already unpacked tree (for instance one [`crate::fetch`] made
    /// earlier).
    pub fn open(root: &Path) -> Result<Context, ArtifactError> {
        let mut total = 0;
        for item in WalkDir::new(root).follow_links(false) {
            let item = item.map_err(|e| ArtifactError::io(root, e.into()))?;
            if item.file_type().is_file() {
                let meta = item
                    .metadata()
                    .map_err(|e| ArtifactError::io(item.path(), e.into()))?;
                total += meta.len();
            }
        }
        Context::unpacked(root, total)
    }

    pub(crate) fn unpacked(root: &Path, total_bytes: u64) -> Result<Context, ArtifactError> {
        let meta = fs::metadata(root).map_err(|e| ArtifactError::io(root, e))?;
        if !meta.is_dir() {
            return Err(ArtifactError::NotADirectory(root.to_path_buf()));
        }
        let mut context = Context {
            root: root.to_path_buf(),
            total_bytes,
            ignore: IgnoreRules::default(),
        };
        if let Some(text) = context.read_text(".dockerignore")? {
            context.ignore = IgnoreRules::parse(&text)?;
        }
        Ok(context)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Unpacked regular-file bytes (the API's `codeInstallSizeInBytes`).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The Dockerfile at the root: at most 1 MiB of UTF-8.
    pub fn dockerfile(&self) -> Result<String, ArtifactError> {
        self.read_text("Dockerfile")?
            .ok_or(ArtifactError::NoDockerfile)
    }

    /// A small UTF-8 file at the root, `None` when there is none.
    fn read_text(&self, name: &str) -> Result<Option<String>, ArtifactError> {
        let Some((rel, meta)) = self.resolve(Path::new(name))? else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        let path = self.root.join(rel);
        let mut bytes = Vec::new();
        open_nofollow(&path)?
            .take(MAX_DOCKERFILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ArtifactError::io(&path, e))?;
        if bytes.len() as u64 > MAX_DOCKERFILE_BYTES {
            return Err(ArtifactError::DockerfileTooLarge {
                limit: MAX_DOCKERFILE_BYTES,
            });
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ArtifactError::DockerfileNotUtf8)
    }

    /// Follows `rel` inside the root the way the kernel would, symlinks
    /// included, refusing to leave the root. `None` if it does not exist.
    fn resolve(&self, rel: &Path) -> Result<Option<(PathBuf, Metadata)>, ArtifactError> {
        let mut pending: VecDeque<OsString> = VecDeque::new();
        push_front_components(&mut pending, rel, rel)?;
        let mut current = PathBuf::new();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                if !current.pop() {
                    return Err(ArtifactError::SymlinkEscapes { path: rel.into() });
                }
                continue;
            }
            let candidate = current.join(&part);
            let full = self.root.join(&candidate);
            let meta = match fs::symlink_metadata(&full) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ArtifactError::io(full, e)),
            };
            if meta.is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ArtifactError::SymlinkEscapes { path: candidate });
                }
                let target = fs::read_link(&full).map_err(|e| ArtifactError::io(&full, e))?;
                push_front_components(&mut pending, &target, &candidate)?;
            } else if !meta.is_dir() && !pending.is_empty() {
                return Ok(None);
            } else {
                current = candidate;
            }
        }
        let full = self.root.join(&current);
        let meta = fs::symlink_metadata(&full).map_err(|e| ArtifactError::io(full, e))?;
        Ok(Some((current, meta)))
    }

    /// Expands `COPY`/`ADD` source patterns (Go `filepath.Match` globs,
    /// relative to the root; a leading '/' means the root). Every pattern
    /// must match something that `.dockerignore` does not exclude.
    pub fn select(&self, patterns: &[String]) -> Result<Vec<Selected>, ArtifactError> {
        let mut selected = Vec::new();
        for raw in patterns {
            let parts = clean_source(raw)?;
            let names = if pattern::has_meta(raw) {
                self.glob(raw, &parts)?
            } else {
                vec![parts.iter().collect::<PathBuf>()]
            };
            let before = selected.len();
            for name in names {
                if self.ignore.is_ignored(&slash_path(&name)) {
                    continue;
                }
                let Some((rel, meta)) = self.resolve(&name)? else {
                    continue;
                };
                selected.push(self.selected(name, rel, &meta)?);
            }
            if selected.len() == before {
                return Err(ArtifactError::NoMatch {
                    pattern: raw.clone(),
                });
            }
        }
        Ok(selected)
    }

    /// Paths matching a glob, component by component, in name order.
    fn glob(&self, raw: &str, parts: &[String]) -> Result<Vec<PathBuf>, ArtifactError> {
        let mut found = vec![PathBuf::new()];
        for part in parts {
            let mut next = Vec::new();
            for dir in &found {
                let full = self.root.join(dir);
                let is_dir = fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    continue;
                }
                if !pattern::has_meta(part) {
                    let candidate = dir.join(part);
                    if fs::symlink_metadata(self.root.join(&candidate)).is_ok() {
                        next.push(candidate);
                    }
                    continue;
                }
                let mut names = Vec::new();
                for item in fs::read_dir(&full).map_err(|e| ArtifactError::io(&full, e))? {
                    let item = item.map_err(|e| ArtifactError::io(&full, e))?;
                    names.push(item.file_name());
                }
                names.sort();
                for name in names {
                    let Some(text) = name.to_str() else { continue };
                    let hit = pattern::matches(part, text).map_err(|reason| {
                        ArtifactError::BadPattern {
                            pattern: raw.to_string(),
                            reason,
                        }
                    })?;
                    if hit {
                        next.push(dir.join(text));
                    }
                }
            }
            found = next;
        }
        Ok(found)
    }

    fn selected(
        &self,
        name: PathBuf,
        rel: PathBuf,
        meta: &Metadata,
    ) -> Result<Selected, ArtifactError> {
        let source = entry_from(&self.root, rel.clone(), meta)?;
        let mut contents = Vec::new();
        if meta.is_dir() {
            let base = self.root.join(&rel);
            let mut walk = WalkDir::new(&base)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter();
            while let Some(item) = walk.next() {
                let item = item.map_err(|e| ArtifactError::io(&base, e.into()))?;
                let sub = item
                    .path()
                    .strip_prefix(&self.root)
                    .map_err(|_| ArtifactError::SymlinkEscapes {
                        path: item.path().into(),
                    })?
                    .to_path_buf();
                if self.ignore.is_ignored(&slash_path(&sub)) {
                    // An exception may re-include something further down.
                    if item.file_type().is_dir() && !self.ignore.has_exceptions() {
                        walk.skip_current_dir();
                    }
                    continue;
                }
                let meta = item
                    .metadata()
                    .map_err(|e| ArtifactError::io(item.path(), e.into()))?;
                contents.push(entry_from(&self.root, sub, &meta)?);
            }
        }
        Ok(Selected {
            name,
            source,
            contents,
        })
    }

    /// SHA-256 (hex) over the selected entries' names, relative paths,
    /// types, modes, link targets and bytes: the builder's cache key.
    pub fn digest(&self, selected: &[Selected]) -> Result<String, ArtifactError> {
        let mut hash = Sha256::new();
        for s in selected {
            field(&mut hash, b"source");
            field(&mut hash, s.name.as_os_str().as_encoded_bytes());
            for entry in std::iter::once(&s.source).chain(&s.contents) {
                let rel = entry
                    .path
                    .strip_prefix(&s.source.path)
                    .unwrap_or(&entry.path);
                field(&mut hash, rel.as_os_str().as_encoded_bytes());
                field(&mut hash, &entry.mode.to_le_bytes());
                match &entry.kind {
                    EntryKind::Dir => field(&mut hash, b"dir"),
                    EntryKind::Symlink { target } => {
                        field(&mut hash, b"symlink");
                        field(&mut hash, target.as_os_str().as_encoded_bytes());
                    }
                    EntryKind::File { size } => {
                        field(&mut hash, b"file");
                        field(&mut hash, &size.to_le_bytes());
                        let path = self.root.join(&entry.path);
                        let file = open_checked(&path, *size)?;
                        let copied = io::copy(&mut file.take(*size), &mut hash)
                            .map_err(|e| ArtifactError::io(&path, e))?;
                        if copied != *size {
                            return Err(ArtifactError::Changed { path });
                        }
                    }
                }
            }
        }
        Ok(format!("{:x}", hash.finalize()))
    }

    /// Writes a tar that, extracted with `tar -x -C /` in the guest, has
    /// Docker's `COPY` semantics for `dest` (see [`CopyTar`]).
    pub fn write_copy_tar(
        &self,
        selected: &[Selected],
        dest: &str,
        owner: Option<(u32, u32)>,
        extract_archives: bool,
        out: &mut dyn io::Write,
    ) -> Result<CopyTar, ArtifactError> {
        copy_tar::write(&self.root, selected, dest, owner, extract_archives, out)
    }
}

/// Opens a context file without following symlinks and checks it still
/// has the size it was selected with.
pub(crate) fn open_checked(path: &Path, size: u64) -> Result<fs::File, ArtifactError> {
    let file = open_nofollow(path)?;
    let now = file.metadata().map_err(|e| ArtifactError::io(path, e))?;
    if !now.is_file() || now.len() != size {
        return Err(ArtifactError::Changed { path: path.into() });
    }
    Ok(file)
}

/// Length-prefixed, so no two different entry lists hash the same bytes.
fn field(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_le_bytes());
    hash.update(bytes);
}

fn entry_from(root: &Path, path: PathBuf, meta: &Metadata) -> Result<Entry, ArtifactError> {
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_file() {
        EntryKind::File { size: meta.len() }
    } else if meta.is_symlink() {
        let full = root.join(&path);
        EntryKind::Symlink {
            target: fs::read_link(&full).map_err(|e| ArtifactError::io(full, e))?,
        }
    } else {
        return Err(ArtifactError::entry(
            path.display(),
            "devices, FIFOs and sockets cannot be copied",
        ));
    };
    Ok(Entry {
        path,
        kind,
        mode: meta.mode() & 0o777,
    })
}

fn push_front_components(
    pending: &mut VecDeque<OsString>,
    path: &Path,
    link: &Path,
) -> Result<(), ArtifactError> {
    let mut parts = Vec::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArtifactError::SymlinkEscapes { path: link.into() })
            }
        }
    }
    for part in parts.into_iter().rev() {
        pending.push_front(part);
    }
    Ok(())
}

/// A source pattern's components after Go's `filepath.Clean`, relative to
/// the root; a `..` that climbs out is an error.
fn clean_source(raw: &str) -> Result<Vec<String>, ArtifactError> {
    if raw.is_empty() || raw.contains('\0') {
        return Err(ArtifactError::BadPattern {
            pattern: raw.to_string(),
            reason: "empty or contains NUL",
        });
    }
    let mut parts: Vec<String> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ArtifactError::SourceEscapes {
                        pattern: raw.to_string(),
                    });
                }
            }
            other => parts.push(other.to_string()),
        }
    }
    Ok(parts)
}

fn slash_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
