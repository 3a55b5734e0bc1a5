//! The id newtypes (`UserId`, `NodeId`, `ConnId`, `MsgId`), their rules and the id generator,
//! defined in `wsroute_core::ids` (router-cli and the tests share them) and re-exported here so
//! that the server's many `crate::ids` imports stay as they are.

pub use wsroute_core::ids::*;
