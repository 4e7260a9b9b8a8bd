//! Lexical path rules for WORKDIR and COPY/ADD: nothing here touches a
//! filesystem, the paths live in an image that does not exist yet.

/// Normalises `path` against `base` (an absolute directory): `.` and empty
/// components vanish, `..` removes one component but never climbs above `/`.
pub fn resolve(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') {
        [path].concat()
    } else {
        [base, "/", path].concat()
    };
    for component in joined.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Where a COPY/ADD lands. A trailing `/` is kept because it changes the
/// meaning (copy *into* the directory); a destination whose last component
/// is `.` or `..` names a directory too, so it gets the `/` as well.
pub fn resolve_dest(workdir: &str, dest: &str) -> String {
    let last = dest.rsplit('/').next().unwrap_or(dest);
    let names_directory = dest.ends_with('/') || last == "." || last == "..";
    let mut resolved = resolve(workdir, dest);
    if names_directory && !resolved.ends_with('/') {
        resolved.push('/');
    }
    resolved
}

/// True when a source path climbs out of the build context (`../x`,
/// `a/../../x`). A leading `/` means the context's root, as in Docker.
pub fn escapes_context(source: &str) -> bool {
    let mut depth = 0usize;
    for component in source.split('/') {
        match component {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_is_lexical_and_stays_under_root() {
        assert_eq!(resolve("/", "app"), "/app");
        assert_eq!(resolve("/app", "src/./lib/"), "/app/src/lib");
        assert_eq!(resolve("/app/src", ".."), "/app");
        assert_eq!(resolve("/a", "../../../.."), "/");
        assert_eq!(resolve("/a", "/b//c/../d"), "/b/d");
    }

    #[test]
    fn destinations_keep_their_directory_meaning() {
        assert_eq!(resolve_dest("/app", "bin/"), "/app/bin/");
        assert_eq!(resolve_dest("/app", "bin"), "/app/bin");
        assert_eq!(resolve_dest("/app", "."), "/app/");
        assert_eq!(resolve_dest("/app/x", ".."), "/app/");
        assert_eq!(resolve_dest("/", "."), "/");
        assert_eq!(resolve_dest("/app", "/etc/conf"), "/etc/conf");
    }

    #[test]
    fn context_escapes_are_seen() {
        assert!(escapes_context("../secret"));
        assert!(escapes_context("a/../../b"));
        assert!(!escapes_context("a/../b"));
        assert!(!escapes_context("/etc/passwd"));
        assert!(!escapes_context("./src/*.rs"));
    }
}
