//! `s3://bucket[/prefix]`, checked.

use std::fmt;

use crate::BlobError;

/// Bytes a key prefix may have.
const MAX_PREFIX_LEN: usize = 512;

/// `--blob-store s3://bucket[/prefix]` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub bucket: String,
    /// `""`, or a key prefix ending in `/` (`"a/b/"`).
    pub prefix: String,
}

impl BlobLocation {
    /// Splits and checks `s3://bucket[/prefix]`; a trailing `/` is optional.
    pub fn parse(uri: &str) -> Result<Self, BlobError> {
        let invalid = |reason: &str| BlobError::Invalid(format!("{reason}: {uri:.200?}"));
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("a blob store is s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        ember_artifact::check_s3_bucket(bucket)
            .map_err(|reason| invalid(&format!("the bucket name {reason}")))?;
        check_prefix(prefix).map_err(|reason| invalid(&format!("the key prefix {reason}")))?;
        let prefix = match prefix {
            "" => String::new(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        Ok(BlobLocation {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

impl fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.strip_suffix('/') {
            Some(prefix) => write!(f, "s3://{}/{prefix}", self.bucket),
            None => write!(f, "s3://{}", self.bucket),
        }
    }
}

fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err("is longer than 512 bytes");
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may hold only printable ASCII, without spaces");
    }
    if prefix.starts_with('/') || prefix.contains("//") {
        return Err("must not start with '/' or hold an empty segment");
    }
    if prefix.contains("..") {
        return Err("must not hold '..'");
    }
    if prefix.split('/').any(|segment| segment == ".") {
        return Err("must not hold a '.' segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(uri: &str) -> (String, String) {
        let l = BlobLocation::parse(uri).unwrap();
        (l.bucket, l.prefix)
    }

    #[test]
    fn accepts_buckets_and_prefixes() {
        let pair = |b: &str, p: &str| (b.to_string(), p.to_string());
        assert_eq!(parsed("s3://my-bucket"), pair("my-bucket", ""));
        assert_eq!(parsed("s3://my-bucket/"), pair("my-bucket", ""));
        assert_eq!(parsed("s3://b.v2/ember"), pair("b.v2", "ember/"));
        assert_eq!(parsed("s3://abc/a/b-c_d/"), pair("abc", "a/b-c_d/"));
        for uri in ["s3://abc", "s3://abc/a/b"] {
            assert_eq!(BlobLocation::parse(uri).unwrap().to_string(), uri);
        }
        assert_eq!(
            BlobLocation::parse("s3://abc/a/").unwrap().to_string(),
            "s3://abc/a"
        );
        let long = format!("s3://abc/{}", "p".repeat(MAX_PREFIX_LEN));
        assert!(BlobLocation::parse(&long).is_ok());
    }

    #[test]
    fn refuses_bad_locations() {
        let long_bucket = format!("s3://{}", "a".repeat(64));
        let long_prefix = format!("s3://abc/{}", "p".repeat(MAX_PREFIX_LEN + 1));
        for bad in [
            "",
            "abc",
            "http://abc/x",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://under_score",
            "s3://-abc",
            "s3://abc-",
            "s3://a..b",
            "s3://a.-b",
            "s3://192.168.1.1",
            "s3://abc//x",
            "s3://abc/a//b",
            "s3://abc/../x",
            "s3://abc/a/../b",
            "s3://abc/a..b",
            "s3://abc/./x",
            "s3://abc/a b",
            "s3://abc/a\nb",
            "s3://abc/caf\u{e9}",
            &long_bucket,
            &long_prefix,
        ] {
            assert!(
                matches!(BlobLocation::parse(bad), Err(BlobError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }
}
