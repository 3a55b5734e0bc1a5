//! Writes on keys of several Redis Cluster slots, staged so that the route table's order holds
//! (see `db`): one pipeline on one server, one pipeline per slot group and stage on a cluster.

use redis::Cmd;

/// Writes on keys of several slots, in stages: a stage is applied only after the one before it.
/// Each command is filed under the slot group of its key (its `{hash tag}`).
pub struct Writes {
    /// Each stage's commands with the slot group of their key (see [`RedisConn::write`]).
    ///
    /// [`RedisConn::write`]: super::RedisConn::write
    pub(super) stages: Vec<Vec<(String, Cmd)>>,
}

impl Default for Writes {
    fn default() -> Self {
        Self::new()
    }
}

impl Writes {
    pub fn new() -> Self {
        Self {
            stages: vec![Vec::new()],
        }
    }

    /// Adds `cmd`, whose key is `key`, to the current stage.
    pub fn add(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        if let Some(stage) = self.stages.last_mut() {
            stage.push((slot_group(key).to_owned(), cmd));
        }
        self
    }

    /// Starts the next stage: what is added from now on runs after what was added before.
    pub fn then(&mut self) -> &mut Self {
        if self.stages.last().is_some_and(|s| !s.is_empty()) {
            self.stages.push(Vec::new());
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(Vec::is_empty)
    }
}

/// The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key.
fn slot_group(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_their_hash_tag() {
        assert_eq!(slot_group("wsr:u:{bob}:conns"), "bob");
        assert_eq!(slot_group("wsr:u:{bob}:inbox:ids"), "bob");
        assert_eq!(slot_group("wsr:nodes"), "wsr:nodes");
        assert_eq!(slot_group("a{}b"), "a{}b");
    }
}
