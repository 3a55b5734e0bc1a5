//! Where users are: the route table in Redis (the truth, tied to node leases) and the local cache
//! in front of it (so that steady-state sends touch Redis zero times).

pub mod cache;
pub mod events;
pub mod keys;
pub mod registry;
pub mod store;

use std::sync::Arc;

use crate::ids::{ConnId, NodeId};

/// One live connection of a user, as the route table knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub conn: ConnId,
    pub node: NodeId,
    pub device: Option<Arc<str>>,
    pub connected_at_ms: i64,
}

impl Route {
    /// The value stored in the user's hash: `node \t device \t connected_at_ms`.
    pub fn encode_value(&self) -> String {
        format!(
            "{}\t{}\t{}",
            self.node,
            self.device.as_deref().unwrap_or(""),
            self.connected_at_ms
        )
    }

    /// Reads one hash entry back; `None` for an entry this version cannot read (skipped, logged).
    pub fn decode(conn: &str, value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, '\t');
        let node = NodeId::parse(parts.next()?).ok()?;
        let device = parts.next().filter(|d| !d.is_empty()).map(Arc::from);
        let connected_at_ms = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        Some(Self {
            conn: ConnId::parse(conn).ok()?,
            node,
            device,
            connected_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_value_round_trips() {
        let r = Route {
            conn: ConnId::parse("c1").expect("valid"),
            node: NodeId::parse("n1").expect("valid"),
            device: Some(Arc::from("phone")),
            connected_at_ms: 42,
        };
        assert_eq!(Route::decode("c1", &r.encode_value()), Some(r.clone()));
        let no_device = Route { device: None, ..r };
        assert_eq!(
            Route::decode("c1", &no_device.encode_value()),
            Some(no_device)
        );
        assert_eq!(Route::decode("c1", "bad node!\t\t1"), None);
    }
}
