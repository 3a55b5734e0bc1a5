//! Identifier newtypes (`UserId`, `NodeId`, `ConnId`, `MsgId`) so they cannot be swapped, the
//! rules a user-supplied id must meet, and the generator of cluster-unique ids.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a string is not a valid user or node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes, got {len}")]
    TooLong { len: usize, max: usize },
    #[error("may contain only A-Z a-z 0-9 _ . @ : -")]
    BadChar,
}

/// The id rules of PROTOCOL.md section 2: 1 to `max` bytes of `[A-Za-z0-9_.@:-]`.
fn check(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b':' | b'-'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        /// Cheap to clone (shared string); never contains characters that need escaping in JSON.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check(s, $max)?;
                Ok(Self(Arc::from(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// A user, as named by the `sub` of their token.
    UserId, 128
);
id_type!(
    /// A node of the cluster (`--node-id`).
    NodeId, 128
);
id_type!(
    /// One WebSocket connection, unique across the cluster and across restarts.
    ConnId, 128
);
id_type!(
    /// One message, unique across the cluster; kept on every redelivery.
    MsgId, 128
);

/// Makes cluster-unique ids: a random 64-bit prefix chosen when the process starts, followed by
/// a counter. Two processes collide only if they draw the same prefix (p ~ n^2 / 2^65).
#[derive(Debug)]
pub struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

impl IdGen {
    pub fn new() -> Self {
        Self {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }

    fn next_hex(&self, tag: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{tag}{:016x}{n:x}", self.prefix)
    }

    pub fn msg(&self) -> MsgId {
        MsgId(Arc::from(self.next_hex("m")))
    }

    pub fn conn(&self) -> ConnId {
        ConnId(Arc::from(self.next_hex("c")))
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("bob").is_ok());
        assert!(UserId::parse("a.b@c:d-e_f9").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse("bo b"), Err(IdError::BadChar));
        assert_eq!(UserId::parse("bob\""), Err(IdError::BadChar));
        assert_eq!(UserId::parse("é"), Err(IdError::BadChar));
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(
            UserId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, max: 128 })
        );
    }

    #[test]
    fn generated_ids_are_distinct_and_valid() {
        let a = IdGen::new();
        let b = IdGen::new();
        let ids: std::collections::HashSet<String> = (0..1000)
            .flat_map(|_| [a.msg().to_string(), b.msg().to_string()])
            .collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| MsgId::parse(id).is_ok()));
        assert_ne!(a.conn(), a.conn());
    }
}
