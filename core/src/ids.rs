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

    /// `tag`, the prefix (16 hex digits) and the counter (hex), built on the stack so that the
    /// id costs one allocation (its `Arc<str>`): one id per message.
    fn next_hex(&self, tag: u8) -> Arc<str> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 33];
        buf[0] = tag;
        for i in 0..16 {
            buf[1 + i] = HEX[((self.prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        let text = std::str::from_utf8(&buf[..17 + digits]).expect("hex digits are ASCII");
        Arc::from(text)
    }

    pub fn msg(&self) -> MsgId {
        MsgId(self.next_hex(b'm'))
    }

    pub fn conn(&self) -> ConnId {
        ConnId(self.next_hex(b'c'))
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
    fn generated_ids_are_tag_prefix_and_counter_in_hex() {
        let g = IdGen {
            prefix: 0x0123_4567_89ab_cdef,
            next: AtomicU64::new(1),
        };
        assert_eq!(g.msg().as_str(), "m0123456789abcdef1");
        assert_eq!(g.conn().as_str(), "c0123456789abcdef2");
        g.next.store(0xfff, Ordering::Relaxed);
        assert_eq!(g.msg().as_str(), "m0123456789abcdeffff");
        g.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(g.msg().as_str(), "m0123456789abcdefffffffffffffffff");
        let parsed = MsgId::parse(g.msg().as_str());
        assert!(parsed.is_ok(), "a generated id parses: {parsed:?}");
    }

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
