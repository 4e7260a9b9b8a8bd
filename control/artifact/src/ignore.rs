//! `.dockerignore`, with Docker's semantics: patterns are cleaned paths
//! relative to the root, `*`/`?`/`[..]` do not cross '/', a `**` component
//! matches any number of components, `!` re-includes, the last matching
//! pattern wins, and a pattern that matches a parent matches its contents.

use crate::pattern;
use crate::ArtifactError;

#[derive(Debug)]
struct Rule {
    parts: Vec<String>,
    exception: bool,
}

/// The parsed `.dockerignore` of a context (empty when it has none).
#[derive(Debug, Default)]
pub(crate) struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    pub(crate) fn parse(text: &str) -> Result<Self, ArtifactError> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, raw) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let parts = clean(raw);
            if parts.is_empty() {
                continue;
            }
            for part in parts.iter().filter(|p| p.as_str() != "**") {
                // Surface malformed globs now rather than as silent misses.
                pattern::matches(part, "").map_err(|reason| ArtifactError::BadPattern {
                    pattern: format!(".dockerignore: {line}"),
                    reason,
                })?;
            }
            rules.push(Rule { parts, exception });
        }
        Ok(IgnoreRules { rules })
    }

    pub(crate) fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether the relative path `rel` ('/'-separated) is excluded.
    pub(crate) fn is_ignored(&self, rel: &str) -> bool {
        let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        if components.is_empty() {
            return false;
        }
        let mut ignored = false;
        for rule in &self.rules {
            // The path itself or any of its parents.
            let hit = (1..=components.len()).any(|n| match_parts(&rule.parts, &components[..n]));
            if hit {
                ignored = !rule.exception;
            }
        }
        ignored
    }
}

/// Go's `filepath.Clean` of a pattern, split into components, with the
/// leading '/' dropped (Docker treats the root as the context).
fn clean(raw: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_string()),
        }
    }
    parts
}

fn match_parts(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((name, path_rest)) => {
                pattern::matches(first, name).unwrap_or(false) && match_parts(rest, path_rest)
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let rules = IgnoreRules::parse(
            "# comment\n\n*.md\n!README.md\nbuild/\n**/*.pyc\n/secret\nlogs/**\n!logs/keep.txt\n",
        )
        .unwrap();
        assert!(rules.is_ignored("notes.md"));
        assert!(!rules.is_ignored("README.md"));
        assert!(!rules.is_ignored("docs/notes.md"), "* does not cross '/'");
        assert!(rules.is_ignored("build"));
        assert!(
            rules.is_ignored("build/out/x.o"),
            "parent match covers contents"
        );
        assert!(rules.is_ignored("a.pyc"));
        assert!(rules.is_ignored("a/b/c.pyc"));
        assert!(rules.is_ignored("secret"));
        assert!(rules.is_ignored("logs/a.txt"));
        assert!(!rules.is_ignored("logs/keep.txt"));
        assert!(!rules.is_ignored("src/main.py"));
        assert!(rules.has_exceptions());
        assert!(IgnoreRules::parse("a[").is_err());
    }
}
