//! A tiny in-process TTL map for credential lookups.
//!
//! Signed requests would otherwise cost one database round trip each just to find the
//! keypair; with a short TTL a busy key costs one lookup per TTL per API process, which is
//! what lets signed GraphQL reach thousands of requests per second.
//!
//! **Staleness bound:** a change to a keypair or its user (deactivation, deletion, new
//! secret, role or rate limit) takes effect in every API process at most `ttl` after it
//! commits. Negative results are cached too (so a flood of bad keys does not reach the
//! database), so a keypair created right after a failed attempt with its key becomes usable
//! at most `ttl` later.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a credential lookup is trusted.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(1);

/// Past this many entries, expired ones are swept on insert (and everything, if all are
/// fresh), so a key-guessing flood cannot grow the map without bound.
const MAX_ENTRIES: usize = 50_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // a valid cache, and a miss is always safe.
        let map = self.map.lock().ok()?;
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), value));
    }

    pub fn remove(&self, key: &K) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires() {
        let c = TtlCache::new(Duration::from_millis(30));
        c.insert("a", 1);
        assert_eq!(c.get(&"a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&"a"), None);
        c.insert("b", 2);
        c.remove(&"b");
        assert_eq!(c.get(&"b"), None);
    }
}
