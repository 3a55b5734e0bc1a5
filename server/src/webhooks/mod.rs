//! Webhooks to the app's backend (docs/protocol.md, webhooks): `message.stored`, `user.online`,
//! `user.offline`, POSTed signed, at least once each, surviving the crash of the node sending them.
//!
//! How: each event is written to a Redis stream (`keys::webhook_events`) in the same Redis step
//! as the change that causes it: the inbox script that stores a message, the registration script
//! that sees a user's first connection, the removal script that sees their last. Every node
//! reads the stream through one shared consumer group and POSTs what it reads; a 2xx answer
//! acks and deletes the entry; a failure leaves it pending, and whichever node finds it due
//! after its back-off claims it and tries again (the pending entry's delivery count is the
//! attempt number). What a dead or stuck node left pending is claimed the same way once it has
//! been idle past [`deliver::VISIBILITY`]. After the last attempt the entry moves to the dead
//! stream with its last error.
//!
//! On Redis Cluster the stream's slot (hash tag `{webhooks}`) is not the user's, and no script
//! may span slots: there the script answers whether an event happened and the event is appended
//! by the next command on the same connection, so a node that dies between the two (a window of
//! one round trip) loses that one event. On a single server (and behind Sentinel) the event is
//! written inside the script itself.
//!
//! Files: `event` builds the events and appends them (the `Emitter` the route table and the
//! inbox write through), `sign` signs bodies, `queue` is the consumer group's Redis side,
//! `deliver` the loop that POSTs.

pub mod deliver;
pub mod event;
pub mod queue;
pub mod sign;
