//! The gRPC mesh between nodes: `client` keeps one long-lived channel and one batching queue per
//! peer; `server` receives forwarded batches and writes them to local connections; `wire` turns
//! messages into their protobuf form and back.

pub mod client;
pub mod server;
pub mod tls;
pub mod wire;

/// Metadata key carrying the mesh secret (and the API key on the Router service).
pub const AUTH_HEADER: &str = "authorization";

/// Compares two secrets in time that depends only on their lengths.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Checks `authorization: Bearer <secret>` metadata. `None` as the expected secret means the
/// operator configured none: every call is refused, since there is nothing to compare with.
pub fn check_bearer(
    metadata: &tonic::metadata::MetadataMap,
    expected: Option<&str>,
    what: &str,
) -> Result<(), tonic::Status> {
    let Some(expected) = expected else {
        return Err(tonic::Status::unauthenticated(format!(
            "{what} is not configured on this node"
        )));
    };
    let given = metadata
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| tonic::Status::unauthenticated(format!("missing {what}")))?;
    if secret_matches(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(format!("wrong {what}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(check_bearer(&md, Some("s3"), "mesh secret").is_err());
        md.insert(AUTH_HEADER, "Bearer s3".parse().expect("ascii"));
        assert!(check_bearer(&md, Some("s3"), "mesh secret").is_ok());
        assert!(check_bearer(&md, Some("s4"), "mesh secret").is_err());
        assert!(check_bearer(&md, Some("s33"), "mesh secret").is_err());
        assert!(check_bearer(&md, None, "api key").is_err());
    }
}
