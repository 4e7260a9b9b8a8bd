//! `USER` and `--chown` resolve against the image's own /etc/passwd and
//! /etc/group, read from the guest: the host's accounts mean nothing there.

use ember_vmm::agent::AgentClient;

/// Bigger account databases than this are not plausible in an image.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

#[derive(Debug, Default, Clone)]
pub struct Accounts {
    /// (name, uid, primary gid, home)
    users: Vec<(String, u32, u32, String)>,
    groups: Vec<(String, u32)>,
}

/// A resolved `USER` / `--chown` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
}

impl Accounts {
    /// Reads the guest's account files; missing files mean no names.
    pub async fn load(agent: &AgentClient) -> Self {
        let read = |path: &'static str| async move {
            agent
                .read_file(path, MAX_ACCOUNT_FILE)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Self::parse(&read("/etc/passwd").await, &read("/etc/group").await)
    }

    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((
                    f.first()?.to_string(),
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                    f.get(5).unwrap_or(&"/").to_string(),
                ))
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect();
        Self { users, groups }
    }

    /// Resolves `user[:group]`, names or numbers, Docker's way: a numeric
    /// uid not in passwd is allowed (gid 0 unless given), a name must exist.
    pub fn resolve(&self, spec: &str) -> Result<Identity, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary_gid, home) = if let Ok(uid) = user.parse::<u32>() {
            match self.users.iter().find(|u| u.1 == uid) {
                Some(u) => (uid, u.2, Some(u.3.clone())),
                None => (uid, 0, None),
            }
        } else {
            let u = self.users.iter().find(|u| u.0 == user).ok_or_else(|| {
                format!("unknown user {user:?}: it is not in the image's /etc/passwd")
            })?;
            (u.1, u.2, Some(u.3.clone()))
        };
        let gid = match group {
            None | Some("") => primary_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .groups
                    .iter()
                    .find(|x| x.0 == g)
                    .map(|x| x.1)
                    .ok_or_else(|| {
                        format!("unknown group {g:?}: it is not in the image's /etc/group")
                    })?,
            },
        };
        Ok(Identity { uid, gid, home })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_groups() {
        let a = Accounts::parse(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
            "root:x:0:\nstaff:x:50:\napp:x:1001:\n",
        );
        assert_eq!(
            a.resolve("app").unwrap(),
            Identity {
                uid: 1000,
                gid: 1001,
                home: Some("/home/app".into())
            }
        );
        assert_eq!(a.resolve("app:staff").unwrap().gid, 50);
        assert_eq!(a.resolve("1000:7").unwrap().gid, 7);
        assert_eq!(
            a.resolve("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                home: None
            }
        );
        assert!(a
            .resolve("nobody-here")
            .unwrap_err()
            .contains("/etc/passwd"));
        assert!(a.resolve("app:nogroup").unwrap_err().contains("/etc/group"));
    }
}
