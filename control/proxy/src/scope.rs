//! The ports a token opens: the API's `PortSpecification` list (single
//! ports, inclusive ranges, or every port), checked once at mint time.

use serde::{Deserialize, Serialize};

use crate::token::TokenError;

/// Most port rules one token carries, so every token stays far below
/// `MAX_TOKEN_LEN`.
pub const MAX_PORT_RULES: usize = 64;

/// One allowed entry: a port or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortRule {
    Port(u16),
    Range { start: u16, end: u16 },
}

impl PortRule {
    fn contains(self, port: u16) -> bool {
        match self {
            PortRule::Port(p) => p == port,
            PortRule::Range { start, end } => (start..=end).contains(&port),
        }
    }
}

/// The ports a token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortScope {
    All,
    Only(Vec<PortRule>),
}

impl PortScope {
    pub fn allows(&self, port: u16) -> bool {
        match self {
            PortScope::All => true,
            PortScope::Only(rules) => rules.iter().any(|r| r.contains(port)),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TokenError> {
        let PortScope::Only(rules) = self else {
            return Ok(());
        };
        if rules.is_empty() {
            return Err(TokenError::BadClaims("the port list is empty"));
        }
        if rules.len() > MAX_PORT_RULES {
            return Err(TokenError::BadClaims("more than 64 port rules"));
        }
        for rule in rules {
            match *rule {
                PortRule::Port(0) => return Err(TokenError::BadClaims("port 0")),
                PortRule::Range { start, end } if start == 0 || start > end => {
                    return Err(TokenError::BadClaims(
                        "a port range starts at 0 or after its end",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl PortRule {
    /// A single port from the API's `PortNumber` (1..=65535).
    pub fn port(port: i32) -> Result<Self, TokenError> {
        Ok(PortRule::Port(api_port(port)?))
    }

    /// An inclusive range from the API's `PortRange`.
    pub fn range(start: i32, end: i32) -> Result<Self, TokenError> {
        let (start, end) = (api_port(start)?, api_port(end)?);
        if start > end {
            return Err(TokenError::BadClaims("a port range ends before it starts"));
        }
        Ok(PortRule::Range { start, end })
    }
}

fn api_port(port: i32) -> Result<u16, TokenError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(TokenError::BadClaims("a port is outside 1..=65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        let scope = PortScope::Only(vec![
            PortRule::port(8080).unwrap(),
            PortRule::range(9000, 9010).unwrap(),
        ]);
        assert!(scope.allows(8080) && scope.allows(9000) && scope.allows(9010));
        assert!(!scope.allows(8081) && !scope.allows(9011) && !scope.allows(8999));
        assert!(scope.validate().is_ok());
        assert!(PortScope::All.allows(1) && PortScope::All.allows(65535));
    }

    #[test]
    fn api_numbers_are_checked() {
        assert!(PortRule::port(0).is_err());
        assert!(PortRule::port(65536).is_err());
        assert!(PortRule::port(-1).is_err());
        assert_eq!(PortRule::port(65535).unwrap(), PortRule::Port(65535));
        assert!(PortRule::range(10, 9).is_err());
        assert!(PortScope::Only(vec![]).validate().is_err());
        assert!(PortScope::Only(vec![PortRule::Port(1); MAX_PORT_RULES + 1])
            .validate()
            .is_err());
    }
}
