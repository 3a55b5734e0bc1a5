//! Identifier newtypes (`UserId`, `NodeId`, `ConnId`, `MsgId`, `Cid`) so they cannot be swapped,
//! the rules a user-supplied id must meet, and the two ways a message id is made: generated
//! (cluster-unique) or derived from its sender and the client's `cid` (the same on every resend).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Why a string is not a valid user or node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes, got {len}")]
    TooLong { len: usize, max: usize },
    #[error("may contain only {allowed}")]
    BadChar { allowed: &'static str },
}

/// The characters of a user, node, connection or message id.
const ID_CHARS: &str = "A-Z a-z 0-9 _ . @ : -";
/// The characters of a `cid` (an id's, without `@`).
const CID_CHARS: &str = "A-Z a-z 0-9 _ . : -";

/// Which bytes may appear in an id: [`ID_CHARS`]. A table, so that checking an id (done several
/// times per message: acks, mesh items, confirmations) is one load per byte, not a call.
const ID_TABLE: [bool; 256] = char_table(true);
/// Which bytes may appear in a `cid`: [`CID_CHARS`].
const CID_TABLE: [bool; 256] = char_table(false);

const fn char_table(at_sign: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b'.' | b':' | b'-')
            || (at_sign && c == b'@');
        b += 1;
    }
    t
}

/// The id rules of docs/protocol.md ("Identifiers"): 1 to `max` bytes of `[A-Za-z0-9_.@:-]`.
fn check(s: &str, max: usize) -> Result<(), IdError> {
    check_chars(s, max, &ID_TABLE, ID_CHARS)
}

fn check_chars(
    s: &str,
    max: usize,
    allowed: &[bool; 256],
    allowed_text: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    if !s.bytes().all(|b| allowed[usize::from(b)]) {
        return Err(IdError::BadChar {
            allowed: allowed_text,
        });
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
            /// Whether `s` would parse, without making the id (no allocation).
            pub fn validate(s: &str) -> Result<(), IdError> {
                check(s, $max)
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

/// The client's own key for a message it sends (docs/protocol.md, "Idempotent sends"): 1 to [`Cid::MAX_BYTES`] bytes
/// of `[A-Za-z0-9_.:-]`. Only ever used to derive a [`MsgId`] with [`MsgId::derived`].
#[derive(Clone, PartialEq, Eq)]
pub struct Cid(Arc<str>);

impl Cid {
    pub const MAX_BYTES: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_chars(s, Self::MAX_BYTES, &CID_TABLE, CID_CHARS)?;
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({:?})", &*self.0)
    }
}

impl MsgId {
    /// The first character of every derived id. Generated ids start with `m` ([`IdGen::msg`]),
    /// so a derived id never equals a generated one.
    pub const DERIVED_TAG: char = 'k';

    /// The id of the message `sender` sends with `cid`: the same for every resend of that cid by
    /// that sender, on any node, and different for another sender or another cid. `k` followed
    /// by the first 128 bits of SHA-256 over a version tag, the sender, a 0 byte (which no user
    /// id contains, so the split is unambiguous) and the cid, in unpadded base64url (22
    /// characters, all of them valid in an id).
    pub fn derived(sender: &UserId, cid: &Cid) -> MsgId {
        let digest = Sha256::new()
            .chain_update(b"wsroute.cid.v1\0")
            .chain_update(sender.as_str().as_bytes())
            .chain_update([0u8])
            .chain_update(cid.as_str().as_bytes())
            .finalize();
        let mut text = String::with_capacity(23);
        text.push(Self::DERIVED_TAG);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&digest[..16], &mut text);
        MsgId(Arc::from(text))
    }
}

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

    /// The id of a message from `sender`: derived from its `cid` when it has one (the same on
    /// every resend), generated otherwise.
    pub fn msg_for(&self, sender: &UserId, cid: Option<&Cid>) -> MsgId {
        match cid {
            Some(cid) => MsgId::derived(sender, cid),
            None => self.msg(),
        }
    }

    pub fn conn(&self) -> ConnId {
        ConnId(self.next_hex(b'c'))
    }

    /// A webhook event id (`e...`), unique across the cluster like the others.
    pub fn event(&self) -> Arc<str> {
        self.next_hex(b'e')
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
    fn the_tables_allow_exactly_the_documented_characters() {
        let documented = |b: u8, at: bool| {
            b.is_ascii_uppercase()
                || b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"_.:-".contains(&b)
                || (at && b == b'@')
        };
        for b in 0..=255u8 {
            assert_eq!(ID_TABLE[usize::from(b)], documented(b, true), "id byte {b}");
            assert_eq!(
                CID_TABLE[usize::from(b)],
                documented(b, false),
                "cid byte {b}"
            );
            let one = [b];
            if let Ok(text) = std::str::from_utf8(&one) {
                assert_eq!(MsgId::parse(text).is_ok(), documented(b, true), "byte {b}");
                assert_eq!(Cid::parse(text).is_ok(), documented(b, false), "byte {b}");
            }
        }
        assert!(
            UserId::parse("é").is_err(),
            "no byte of a multi-byte character is allowed"
        );
    }

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
        let bad_char = Err(IdError::BadChar { allowed: ID_CHARS });
        assert_eq!(UserId::parse("bo b"), bad_char);
        assert_eq!(UserId::parse("bob\""), bad_char);
        assert_eq!(UserId::parse("é"), bad_char);
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(
            UserId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, max: 128 })
        );
        for s in [
            "bob",
            "a.b@c:d-e_f9",
            "",
            "bo b",
            "bob\"",
            "é",
            &"x".repeat(129),
        ] {
            assert_eq!(
                UserId::validate(s),
                UserId::parse(s).map(drop),
                "validate and parse agree on {s:?}"
            );
        }
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

    fn cid(s: &str) -> Cid {
        Cid::parse(s).expect("a valid cid")
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("a valid user id")
    }

    #[test]
    fn cid_rules() {
        assert!(Cid::parse("a").is_ok());
        assert!(Cid::parse("Az09_.:-").is_ok());
        assert!(Cid::parse(&"x".repeat(64)).is_ok());
        assert_eq!(Cid::parse(""), Err(IdError::Empty));
        assert_eq!(
            Cid::parse(&"x".repeat(65)),
            Err(IdError::TooLong { len: 65, max: 64 })
        );
        let bad_char = Err(IdError::BadChar { allowed: CID_CHARS });
        assert_eq!(Cid::parse("a@b"), bad_char, "`@` is an id's, not a cid's");
        assert_eq!(Cid::parse("a b"), bad_char);
        assert_eq!(Cid::parse("a/b"), bad_char);
        assert_eq!(Cid::parse("é"), bad_char);
        assert_eq!(Cid::parse("a\0"), bad_char);
    }

    #[test]
    fn a_derived_id_depends_on_the_sender_and_the_cid_only() {
        let a = MsgId::derived(&user("alice"), &cid("c1"));
        assert_eq!(a, MsgId::derived(&user("alice"), &cid("c1")), "stable");
        assert_ne!(a, MsgId::derived(&user("bob"), &cid("c1")), "per sender");
        assert_ne!(a, MsgId::derived(&user("alice"), &cid("c2")), "per cid");
        // The 0 byte between sender and cid keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(
            MsgId::derived(&user("ab"), &cid("c")),
            MsgId::derived(&user("a"), &cid("bc"))
        );
    }

    #[test]
    fn a_derived_id_is_fixed_across_releases() {
        // Resends may reach nodes of another release: the derivation must never change. The
        // expected value is SHA-256("wsroute.cid.v1\0alice\0c1"), first 16 bytes, base64url.
        let digest = Sha256::digest(b"wsroute.cid.v1\0alice\0c1");
        let expected = format!(
            "k{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
        );
        let id = MsgId::derived(&user("alice"), &cid("c1"));
        assert_eq!(id.as_str(), expected);
        assert_eq!(
            id.as_str(),
            "kC5fRZaEcaHZYbYGDxbpBPQ",
            "computed with Python's hashlib"
        );
    }

    #[test]
    fn a_derived_id_is_a_valid_id_that_no_generator_makes() {
        let g = IdGen::new();
        for n in 0..500 {
            let id = MsgId::derived(&user("alice"), &cid(&format!("c{n}")));
            assert_eq!(id.as_str().len(), 23);
            assert!(id.as_str().starts_with(MsgId::DERIVED_TAG));
            assert_eq!(MsgId::parse(id.as_str()).as_ref(), Ok(&id));
            let generated = g.msg_for(&user("alice"), None);
            assert!(!generated.as_str().starts_with(MsgId::DERIVED_TAG));
            assert_ne!(generated, id);
            let c = cid(&format!("c{n}"));
            assert_eq!(g.msg_for(&user("alice"), Some(&c)), id);
        }
    }
}
