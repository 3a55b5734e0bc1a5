//! The ids a client has already handed to the app, in a bounded window: a message that comes
//! again (a resend with its `cid`, an inbox copy of a message already shown) is acked and
//! dropped instead of shown twice.

use std::collections::{HashSet, VecDeque};

/// The last `capacity` ids seen; when full, the oldest is forgotten to make room (a copy older
/// than the window would be shown again: size the window above the number of messages that can
/// be in flight to one user across a reconnect).
#[derive(Debug)]
pub(crate) struct SeenIds {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl SeenIds {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Records `id`; false if it was seen already.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_within_the_window_and_the_oldest_is_forgotten() {
        let mut s = SeenIds::new(2);
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        assert!(s.insert("b"));
        assert!(s.insert("c")); // "a" leaves the window
        assert!(!s.insert("b"));
        assert!(!s.insert("c"));
        assert!(s.insert("a"));
        assert_eq!(s.ids.len(), 2);
    }
}
