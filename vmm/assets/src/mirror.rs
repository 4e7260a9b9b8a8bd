//! Which Debian mirror debootstrap fetches from: the host's own, when it
//! is a plain HTTP(S) archive URL, so a host behind a local mirror or
//! proxy keeps using it; Debian's CDN otherwise.

use std::fs;
use std::path::Path;

pub(crate) const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Mirror URLs longer than this are not plain archive URLs.
const MAX_URL_LEN: usize = 512;

/// The host's Debian mirror from `<etc_apt>/sources.list` and
/// `<etc_apt>/sources.list.d/*.sources`, else [`DEFAULT_MIRROR`].
pub(crate) fn host_mirror(etc_apt: &Path) -> String {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string(etc_apt.join("sources.list")) {
        texts.push((false, t));
    }
    if let Ok(entries) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let deb822 = path.extension().is_some_and(|e| e == "sources");
            let one_line = path.extension().is_some_and(|e| e == "list");
            if deb822 || one_line {
                if let Ok(t) = fs::read_to_string(&path) {
                    texts.push((deb822, t));
                }
            }
        }
    }
    texts
        .iter()
        .flat_map(|(deb822, text)| {
            if *deb822 {
                deb822_uris(text)
            } else {
                one_line_uris(text)
            }
        })
        .find(|uri| is_plain_archive(uri))
        .map(|uri| uri.trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// URIs of `deb` lines: `deb [options] uri suite components`.
fn one_line_uris(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(opts) => opts.split_once(']')?.1,
                None => rest,
            };
            rest.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

/// URIs of deb822 stanzas whose `Types` include `deb`.
fn deb822_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut is_deb = false;
        let mut uris = Vec::new();
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => is_deb = value.split_whitespace().any(|t| t == "deb"),
                "uris" => uris.extend(value.split_whitespace().map(str::to_string)),
                "enabled" if value.trim() == "no" => uris.clear(),
                _ => {}
            }
        }
        if is_deb {
            out.extend(uris);
        }
    }
    out
}

/// `http(s)://host[/path]/debian`: the main archive, not security, ports or
/// a `file:`/`cdrom:` source, and nothing debootstrap would trip over.
fn is_plain_archive(uri: &str) -> bool {
    let uri = uri.trim_end_matches('/');
    let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    else {
        return false;
    };
    uri.len() <= MAX_URL_LEN
        && rest.ends_with("/debian")
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line_sources() {
        let text = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            one_line_uris(text),
            vec!["http://mirror.example/debian/".to_string()]
        );
    }

    #[test]
    fn reads_deb822_sources() {
        let text =
            "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://deb.debian.org/debian\n\
                    Suites: bookworm\n\nTypes: deb-src\nURIs: http://src.example/debian\n\n\
                    Types: deb\nURIs: http://off.example/debian\nEnabled: no\n";
        assert_eq!(
            deb822_uris(text),
            vec!["http://deb.debian.org/debian".to_string()]
        );
    }

    #[test]
    fn only_plain_archive_urls_qualify() {
        assert!(is_plain_archive("http://deb.debian.org/debian"));
        assert!(is_plain_archive("https://mirror.example:8080/pub/debian/"));
        for bad in [
            "http://deb.debian.org/debian-security",
            "file:///srv/debian",
            "cdrom:[Debian]/",
            "http://x/debian?q=1",
            "ftp://x/debian",
        ] {
            assert!(!is_plain_archive(bad), "{bad}");
        }
    }

    #[test]
    fn host_mirror_falls_back_to_the_cdn() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_mirror(dir.path()), DEFAULT_MIRROR);
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://local.example/debian/\nSuites: bookworm\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()), "http://local.example/debian");
    }
}
