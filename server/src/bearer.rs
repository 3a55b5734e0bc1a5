//! Bearer secrets, checked in constant time: the API key (the push API and the Router service)
//! and the mesh secret, sent as `authorization: Bearer <secret>` (an HTTP header or gRPC
//! metadata).

use crate::error::Refusal;

/// The HTTP header and gRPC metadata key carrying the secret.
pub const AUTH_HEADER: &str = "authorization";

/// Why a bearer secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// The operator configured no secret: there is nothing to compare with, so every call is
    /// refused.
    NotConfigured,
    Missing,
    Wrong,
}

/// Checks the value of an `authorization` header (`None` when there is none, or it is not
/// text) against `expected`.
pub fn check(header: Option<&str>, expected: Option<&str>) -> Result<(), BearerError> {
    let expected = expected.ok_or(BearerError::NotConfigured)?;
    let given = header
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(BearerError::Missing)?;
    if secret_matches(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(BearerError::Wrong)
    }
}

/// Checks an HTTP request's `Authorization` header.
pub fn check_http(req: &actix_web::HttpRequest, expected: Option<&str>) -> Result<(), BearerError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check(header, expected)
}

/// Checks a gRPC call's `authorization` metadata; a refusal is `Unauthenticated`, naming `what`
/// is missing or wrong.
pub fn check_grpc(
    metadata: &tonic::metadata::MetadataMap,
    expected: Option<&str>,
    what: &str,
) -> Result<(), tonic::Status> {
    let header = metadata.get(AUTH_HEADER).and_then(|v| v.to_str().ok());
    check(header, expected).map_err(|e| {
        Refusal::Unauthorized.grpc(match e {
            BearerError::NotConfigured => format!("{what} is not configured on this node"),
            BearerError::Missing => format!("missing {what}"),
            BearerError::Wrong => format!("wrong {what}"),
        })
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(check_grpc(&md, Some("s3"), "mesh secret").is_err());
        md.insert(AUTH_HEADER, "Bearer s3".parse().expect("ascii"));
        assert!(check_grpc(&md, Some("s3"), "mesh secret").is_ok());
        assert!(check_grpc(&md, Some("s4"), "mesh secret").is_err());
        assert!(check_grpc(&md, Some("s33"), "mesh secret").is_err());
        let refused = check_grpc(&md, None, "api key").expect_err("none configured");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "api key is not configured on this node");
    }

    #[test]
    fn http_header_check() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer k1"))
            .to_http_request();
        assert_eq!(check_http(&req, Some("k1")), Ok(()));
        assert_eq!(check_http(&req, Some("k2")), Err(BearerError::Wrong));
        assert_eq!(check_http(&req, None), Err(BearerError::NotConfigured));
        let bare = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(check_http(&bare, Some("k1")), Err(BearerError::Missing));
        assert_eq!(
            check(Some("Basic k1"), Some("k1")),
            Err(BearerError::Missing)
        );
    }
}
