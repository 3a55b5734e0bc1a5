//! The read side of users' inboxes (messages kept in Redis for users with no live connection):
//! what waits, oldest first, and how much. Storing and acking is the node's job
//! (`wsroute_server::inbox`).

use std::sync::LazyLock;

use crate::db::{DbError, Redis};
use crate::ids::{MsgId, UserId};
use crate::keys;
use crate::observe::{SharedObserver, Timed};

/// Every message, oldest first, as a flat list id1, frame1, id2, frame2...
static FETCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local frame = redis.call('HGET', KEYS[2], id)
  if frame then
    table.insert(out, id)
    table.insert(out, frame)
  end
end
return out
",
    )
});

/// Reads users' inboxes. Cheap to clone.
#[derive(Clone)]
pub struct InboxReader {
    redis: Redis,
    observer: SharedObserver,
}

impl InboxReader {
    pub fn new(redis: Redis, observer: SharedObserver) -> Self {
        Self { redis, observer }
    }

    /// The user's inbox, oldest first, as `(id, message frame)`.
    pub async fn fetch(&self, user: &UserId) -> Result<Vec<(MsgId, String)>, DbError> {
        let _timed = Timed::start(&*self.observer, "inbox_fetch");
        let mut c = self.redis.hot().await?;
        let flat: Vec<String> = FETCH
            .key(keys::inbox_ids(user))
            .key(keys::inbox_msgs(user))
            .invoke_async(&mut c)
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(frame)) = (it.next(), it.next()) {
            match MsgId::parse(&id) {
                Ok(id) => out.push((id, frame)),
                Err(_) => tracing::warn!(%user, id = %id, "skipping an inbox entry with a bad id"),
            }
        }
        Ok(out)
    }

    /// How many messages wait for a user.
    pub async fn depth(&self, user: &UserId) -> Result<usize, DbError> {
        let mut c = self.redis.hot().await?;
        let n: usize = redis::cmd("LLEN")
            .arg(keys::inbox_ids(user))
            .query_async(&mut c)
            .await?;
        Ok(n)
    }
}
