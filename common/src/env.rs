//! The one environment seam of both binaries: configuration reads variables through [`Env`],
//! so tests pass a map instead of mutating the process environment.

use std::collections::{BTreeMap, HashMap};

/// Read access to environment variables.
pub trait Env {
    /// The value of `key`, if set and valid UTF-8.
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_answers_like_the_environment() {
        let m = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(m.var("A").as_deref(), Some("1"));
        assert_eq!(m.var("B"), None);
        let h: HashMap<String, String> = m.into_iter().collect();
        assert_eq!(h.var("A").as_deref(), Some("1"));
    }
}
