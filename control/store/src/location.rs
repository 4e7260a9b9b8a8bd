//! Where the state lives, as `--store` names it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// `--store`: a SQLite file path, or a `postgres://` / `postgresql://` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a Postgres URL: {e}"))?;
            Ok(Self::Postgres(s.to_string()))
        } else if let Some(path) = s.strip_prefix("sqlite://") {
            Ok(Self::Sqlite(path.into()))
        } else if s.contains("://") {
            Err(format!(
                "unknown store {s:?}: give a SQLite file path, sqlite://PATH or postgres://…"
            ))
        } else if s.is_empty() {
            Err("the store location is empty".into())
        } else {
            Ok(Self::Sqlite(s.into()))
        }
    }
}

/// Never prints a Postgres password: the URL's user info is elided.
impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => match url.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => write!(f, "{scheme}://…@{host}"),
                    None => write!(f, "{url}"),
                },
                None => write!(f, "postgres"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_hide_passwords() {
        assert_eq!(
            "/var/lib/ember/ember.db".parse::<StoreLocation>().unwrap(),
            StoreLocation::Sqlite("/var/lib/ember/ember.db".into())
        );
        assert_eq!(
            "sqlite://rel/x.db".parse::<StoreLocation>().unwrap(),
            StoreLocation::Sqlite("rel/x.db".into())
        );
        let pg: StoreLocation = "postgres://ember:s3cret@db:5432/ember".parse().unwrap();
        assert_eq!(pg.to_string(), "postgres://…@db:5432/ember");
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert!("mysql://x".parse::<StoreLocation>().is_err());
        assert!("".parse::<StoreLocation>().is_err());
        assert!("postgres://h:notaport/db".parse::<StoreLocation>().is_err());
    }
}
