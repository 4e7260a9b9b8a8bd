//! ARNs, identifiers and the names Ember understands in requests.

use ember_builder::ManagedBase;

/// How this daemon spells its ARNs.
#[derive(Debug, Clone)]
pub struct Arns {
    pub region: String,
    pub account: String,
}

impl Arns {
    pub fn image(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:microvm-image:{name}",
            self.region, self.account
        )
    }

    /// Managed images belong to no customer account, as on AWS.
    pub fn managed_image(&self, name: &str) -> String {
        format!("arn:aws:lambda:{}:aws:microvm-image:{name}", self.region)
    }

    /// The image name an `imageIdentifier` (a name or this daemon's ARN)
    /// refers to; `None` for an ARN of another region or account, which
    /// cannot name anything here.
    pub fn image_name<'a>(&self, identifier: &'a str) -> Option<&'a str> {
        match identifier.strip_prefix("arn:") {
            None => Some(identifier),
            Some(_) => {
                let prefix = format!(
                    "arn:aws:lambda:{}:{}:microvm-image:",
                    self.region, self.account
                );
                identifier.strip_prefix(prefix.as_str())
            }
        }
    }

    /// The managed base a `baseImageArn` names: its ARN, or its bare name.
    pub fn managed_base(&self, arn_or_name: &str) -> Option<&'static ManagedBase> {
        let name = match arn_or_name.strip_prefix("arn:") {
            None => arn_or_name,
            Some(rest) => {
                // arn:PARTITION:lambda:REGION:ACCOUNT:microvm-image:NAME
                let parts: Vec<&str> = rest.split(':').collect();
                match parts.as_slice() {
                    [p, "lambda", _, _, "microvm-image", name] if p.starts_with("aws") => *name,
                    _ => return None,
                }
            }
        };
        ember_builder::bases::find(name)
    }
}

/// A random id in the UUID layout, as AWS build ids look.
pub fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arns() -> Arns {
        Arns {
            region: "us-east-1".into(),
            account: "123456789012".into(),
        }
    }

    #[test]
    fn identifiers_are_names_or_our_arns() {
        let a = arns();
        assert_eq!(a.image_name("app"), Some("app"));
        assert_eq!(a.image_name(&a.image("app")), Some("app"));
        assert_eq!(
            a.image_name("arn:aws:lambda:eu-west-1:123456789012:microvm-image:app"),
            None
        );
    }

    #[test]
    fn managed_bases_by_arn_or_name() {
        let a = arns();
        assert_eq!(a.managed_base("busybox").map(|b| b.name), Some("busybox"));
        assert_eq!(
            a.managed_base(&a.managed_image("debian12-minimal"))
                .map(|b| b.name),
            Some("debian12-minimal")
        );
        assert!(a.managed_base("alpine").is_none());
        assert!(a.managed_base("arn:aws:s3:::bucket").is_none());
    }

    #[test]
    fn ids_look_like_uuids_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
