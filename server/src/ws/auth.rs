//! Who is connecting: a client's HS256 token (header or `?token=`), or `?user=` under
//! `--dev-auth`, checked before the WebSocket upgrade. Tokens are never logged.

use std::collections::HashMap;

use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::ids::UserId;

/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;
/// Longest `?device=` accepted.
const MAX_DEVICE_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <JWT>` or `?token=<JWT>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(#[source] crate::ids::IdError),
    #[error("?user= is not a valid user id: {0}")]
    BadDevUser(#[source] crate::ids::IdError),
    #[error("?device= must be 1 to {MAX_DEVICE_BYTES} bytes of A-Z a-z 0-9 _ . @ : -")]
    BadDevice,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    pub device: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    dev_auth: bool,
}

impl Authenticator {
    pub fn new(jwt_secret: Option<&str>, dev_auth: bool) -> Self {
        let jwt = jwt_secret.map(|s| {
            let mut v = Validation::new(Algorithm::HS256);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.validate_exp = true;
            v.leeway = LEEWAY_SECS;
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        Self { jwt, dev_auth }
    }

    pub fn authenticate(&self, req: &HttpRequest) -> Result<Principal, AuthError> {
        let query: HashMap<String, String> =
            actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .map(|q| q.into_inner())
                .unwrap_or_default();
        let device = match query.get("device") {
            None => None,
            Some(d) if !d.is_empty() && d.len() <= MAX_DEVICE_BYTES && UserId::parse(d).is_ok() => {
                Some(d.clone())
            }
            Some(_) => return Err(AuthError::BadDevice),
        };
        let header_token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = header_token.or(query.get("token").map(String::as_str));

        let user = match (token, &self.jwt) {
            (Some(token), Some((key, validation))) => {
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
                UserId::parse(&data.claims.sub).map_err(AuthError::BadSubject)?
            }
            (Some(_), None) if !self.dev_auth => {
                return Err(AuthError::Invalid("this node accepts no tokens".into()));
            }
            _ if self.dev_auth => match query.get("user") {
                Some(u) => UserId::parse(u).map_err(AuthError::BadDevUser)?,
                None => return Err(AuthError::Missing),
            },
            _ => return Err(AuthError::Missing),
        };
        Ok(Principal { user, device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use jsonwebtoken::{EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }

    fn token(secret: &str, sub: &str, exp: u64) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &C { sub, exp },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn accepts_a_valid_token_in_header_or_query() {
        let a = Authenticator::new(Some("k"), false);
        let t = token("k", "alice", now() + 60);
        let req = TestRequest::get()
            .uri("/ws?device=phone")
            .insert_header(("Authorization", format!("Bearer {t}")))
            .to_http_request();
        let p = a.authenticate(&req).expect("valid");
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(p.device.as_deref(), Some("phone"));
        let req = TestRequest::get()
            .uri(&format!("/ws?token={t}"))
            .to_http_request();
        assert!(a.authenticate(&req).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = Authenticator::new(Some("k"), false);
        let cases = [
            token("wrong", "alice", now() + 60),
            token("k", "alice", now() - 3600),
            token("k", "bad user", now() + 60),
            "not.a.jwt".to_owned(),
        ];
        for t in cases {
            let req = TestRequest::get()
                .uri(&format!("/ws?token={t}"))
                .to_http_request();
            assert!(a.authenticate(&req).is_err(), "accepted {t}");
        }
        let req = TestRequest::get().uri("/ws?user=alice").to_http_request();
        assert!(matches!(a.authenticate(&req), Err(AuthError::Missing)));
    }

    #[test]
    fn dev_auth_takes_user_from_query() {
        let a = Authenticator::new(None, true);
        let req = TestRequest::get().uri("/ws?user=bob").to_http_request();
        assert_eq!(a.authenticate(&req).expect("dev").user.as_str(), "bob");
        let req = TestRequest::get().uri("/ws?user=b%20b").to_http_request();
        assert!(a.authenticate(&req).is_err());
        let req = TestRequest::get()
            .uri("/ws?user=bob&device=a%20b")
            .to_http_request();
        assert!(matches!(a.authenticate(&req), Err(AuthError::BadDevice)));
    }
}
