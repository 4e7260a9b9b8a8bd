//! The variables in force at one instruction: ENV values and declared ARGs.

use crate::words::Variables;

/// ENV and ARG values of one scope (before FROM only ARGs exist).
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// ENV in order of first appearance.
    env: Vec<(String, String)>,
    /// Declared ARGs; `None` for one with neither default nor build arg.
    args: Vec<(String, Option<String>)>,
}

impl Variables for Scope {
    /// ENV wins over an ARG of the same name, as in Docker.
    fn get(&self, name: &str) -> Option<&str> {
        lookup(&self.env, name)
            .map(String::as_str)
            .or_else(|| lookup(&self.args, name).and_then(|value| value.as_deref()))
    }
}

impl Scope {
    pub fn set_env(&mut self, key: String, value: String) {
        upsert(&mut self.env, key, value);
    }

    pub fn declare_arg(&mut self, name: String, value: Option<String>) {
        upsert(&mut self.args, name, value);
    }

    /// The value of a declared ARG (ENV does not count here).
    pub fn arg(&self, name: &str) -> Option<&str> {
        lookup(&self.args, name).and_then(|value| value.as_deref())
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// What a RUN sees: the ENV so far, then the ARGs that have a value and
    /// are not shadowed by an ENV of the same name.
    pub fn run_environment(&self) -> Vec<(String, String)> {
        let args = self.args.iter().filter_map(|(name, value)| {
            let value = value.as_ref()?;
            lookup(&self.env, name)
                .is_none()
                .then(|| (name.clone(), value.clone()))
        });
        self.env.iter().cloned().chain(args).collect()
    }

    /// Bytes of every name and value in the RUN environment.
    pub fn environment_bytes(&self) -> usize {
        let env: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        let args: usize = self
            .args
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
            .sum();
        env + args
    }
}

fn lookup<'a, V>(entries: &'a [(String, V)], name: &str) -> Option<&'a V> {
    entries
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

fn upsert<V>(entries: &mut Vec<(String, V)>, key: String, value: V) {
    match entries.iter_mut().find(|(existing, _)| *existing == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
}
