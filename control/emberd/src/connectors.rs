//! Network connectors by the real service's names: ingress `HTTP_INGRESS`
//! (the endpoint), `SHELL_INGRESS` (the shell, with `HTTP_INGRESS`) or
//! `ALL_INGRESS` (both, alone); egress `INTERNET_EGRESS`. Each may be
//! given bare or as an AWS-managed connector ARN
//! (`arn:aws:lambda:REGION:aws:network-connector:NAME`). Requests are
//! stored with the bare names.

pub const HTTP_INGRESS: &str = "HTTP_INGRESS";
pub const SHELL_INGRESS: &str = "SHELL_INGRESS";
pub const ALL_INGRESS: &str = "ALL_INGRESS";
pub const INTERNET_EGRESS: &str = "INTERNET_EGRESS";
/// Ember's first spelling of `INTERNET_EGRESS`, still accepted so
/// requests and scripts written for it keep working.
const LEGACY_INTERNET: &str = "internet";

/// What a request that names no egress connector gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultEgress {
    /// No outbound network (Ember's default: safe for untrusted code).
    None,
    /// Outbound internet, as the real service does.
    Internet,
}

/// The connector's bare name: itself, or the last part of its ARN.
fn name_of(connector: &str) -> Option<&str> {
    let Some(rest) = connector.strip_prefix("arn:") else {
        return Some(connector);
    };
    // PARTITION:lambda:REGION:ACCOUNT:network-connector:NAME
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [p, "lambda", _, _, "network-connector", name] if p.starts_with("aws") => Some(name),
        _ => None,
    }
}

/// The egress connectors a request gets, as bare names; `None` (the field
/// left out) takes `default`, an explicit empty list means none.
pub fn egress(requested: Option<&[String]>, default: DefaultEgress) -> Result<Vec<String>, String> {
    let Some(requested) = requested else {
        return Ok(match default {
            DefaultEgress::None => Vec::new(),
            DefaultEgress::Internet => vec![INTERNET_EGRESS.to_string()],
        });
    };
    let mut out = Vec::new();
    for c in requested {
        match name_of(c) {
            Some(INTERNET_EGRESS | LEGACY_INTERNET) => {
                if !out.iter().any(|n| n == INTERNET_EGRESS) {
                    out.push(INTERNET_EGRESS.to_string());
                }
            }
            _ => {
                return Err(format!(
                    "unknown egress network connector {c:?}: Ember understands {INTERNET_EGRESS:?} \
                     (or its ARN, arn:aws:lambda:REGION:aws:network-connector:{INTERNET_EGRESS}), \
                     which grants outbound internet"
                ))
            }
        }
    }
    Ok(out)
}

/// The ingress connectors a request gets, as bare names; none given
/// means `HTTP_INGRESS`.
pub fn ingress(requested: Option<&[String]>) -> Result<Vec<String>, String> {
    let requested = requested.unwrap_or(&[]);
    if requested.is_empty() {
        return Ok(vec![HTTP_INGRESS.to_string()]);
    }
    let mut out: Vec<String> = Vec::new();
    for c in requested {
        let name = match name_of(c) {
            Some(n @ (HTTP_INGRESS | SHELL_INGRESS | ALL_INGRESS)) => n,
            _ => {
                return Err(format!(
                    "unknown ingress network connector {c:?}: Ember understands {HTTP_INGRESS:?}, \
                     {SHELL_INGRESS:?} (with {HTTP_INGRESS:?}) and {ALL_INGRESS:?} (alone)"
                ))
            }
        };
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    let has = |n: &str| out.iter().any(|c| c == n);
    if has(ALL_INGRESS) && out.len() > 1 {
        return Err(format!(
            "{ALL_INGRESS} must be the only ingress network connector: it already includes {HTTP_INGRESS} and {SHELL_INGRESS}"
        ));
    }
    if has(SHELL_INGRESS) && !has(HTTP_INGRESS) {
        return Err(format!(
            "{SHELL_INGRESS} needs {HTTP_INGRESS} too (the shell is served at the microVM's endpoint); \
             or use {ALL_INGRESS}"
        ));
    }
    Ok(out)
}

/// Whether stored ingress connectors allow a shell.
pub fn allows_shell(ingress: &[String]) -> bool {
    ingress
        .iter()
        .any(|c| c == SHELL_INGRESS || c == ALL_INGRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn egress_names_arns_and_defaults() {
        assert_eq!(egress(None, DefaultEgress::None), Ok(vec![]));
        assert_eq!(
            egress(None, DefaultEgress::Internet),
            Ok(v(&[INTERNET_EGRESS]))
        );
        assert_eq!(egress(Some(&[]), DefaultEgress::Internet), Ok(vec![]));
        let arn = "arn:aws:lambda:us-east-1:aws:network-connector:INTERNET_EGRESS";
        for given in [INTERNET_EGRESS, arn, "internet"] {
            assert_eq!(
                egress(Some(&v(&[given])), DefaultEgress::None),
                Ok(v(&[INTERNET_EGRESS])),
                "{given}"
            );
        }
        for bad in [
            "vpc-1",
            "internet_egress",
            "arn:aws:s3:::INTERNET_EGRESS",
            "arn:aws:lambda:us-east-1:aws:network-connector:HTTP_INGRESS",
        ] {
            assert!(
                egress(Some(&v(&[bad])), DefaultEgress::None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ingress_rules() {
        assert_eq!(ingress(None), Ok(v(&[HTTP_INGRESS])));
        assert_eq!(ingress(Some(&[])), Ok(v(&[HTTP_INGRESS])));
        assert_eq!(
            ingress(Some(&v(&[HTTP_INGRESS, SHELL_INGRESS]))),
            Ok(v(&[HTTP_INGRESS, SHELL_INGRESS]))
        );
        assert_eq!(
            ingress(Some(&v(&[
                "arn:aws:lambda:us-east-1:aws:network-connector:ALL_INGRESS"
            ]))),
            Ok(v(&[ALL_INGRESS]))
        );
        assert!(ingress(Some(&v(&[SHELL_INGRESS]))).is_err());
        assert!(ingress(Some(&v(&[ALL_INGRESS, HTTP_INGRESS]))).is_err());
        assert!(ingress(Some(&v(&[INTERNET_EGRESS]))).is_err());
        assert!(allows_shell(&v(&[ALL_INGRESS])));
        assert!(allows_shell(&v(&[HTTP_INGRESS, SHELL_INGRESS])));
        assert!(!allows_shell(&v(&[HTTP_INGRESS])));
    }
}
