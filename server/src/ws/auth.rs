//! Who is connecting: a client's HS256 token (header or `?token=`), or `?user=` under
//! `--dev-auth`, checked before the WebSocket upgrade. Tokens are never logged.

use std::collections::HashMap;

use actix_web::dev::RequestHead;
use std::path::PathBuf;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::JwtOptions;
use crate::ids::UserId;

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
    #[error("?watch= must be comma-separated user ids: {0}")]
    BadDevWatch(#[source] crate::ids::IdError),
}

/// Why the configured keys cannot be used (the node refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no RSA or EC public key in PEM form")]
    Pem { path: PathBuf },
    #[error("{path} is not a JWKS file: {message}")]
    Jwks { path: PathBuf, message: String },
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    pub device: Option<String>,
    /// When the session ends (unix seconds): the token's `exp` plus the leeway, the last moment
    /// the token would still be accepted. `None` for dev auth (`?user=`): no token, no end.
    pub expires: Option<u64>,
    /// Who the session may watch under `--presence-policy token`: the token's `watch` claim,
    /// or a dev-auth session's `?watch=a,b` (empty when neither is given).
    pub watch: Vec<UserId>,
}

/// A verified token: whose it is and until when the session it opens may last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// The token's `exp` (unix seconds), as the client is told in `refreshed`.
    pub exp: u64,
    /// `exp` plus the leeway: when a session on this token ends.
    pub ends: u64,
    /// The valid user ids of the token's `watch` claim (presence, docs/protocol.md, presence).
    pub watch: Vec<UserId>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Who the holder may watch for presence: an array of user ids. Read leniently (it only
    /// ever grants): an entry that is not a valid user id is skipped, and a claim that is not an
    /// array grants nothing, so that a token stays good for everything else.
    #[serde(default)]
    watch: Option<serde_json::Value>,
}

/// The valid user ids of a `watch` claim.
fn watch_claim(claim: Option<&serde_json::Value>) -> Vec<UserId> {
    let Some(serde_json::Value::Array(items)) = claim else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|v| v.as_str().and_then(|s| UserId::parse(s).ok()))
        .collect()
}

/// Which algorithms a key may verify. Keys never cross families, which is what stops algorithm
/// confusion (an RS256 public key used as an HS256 secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
}

impl Family {
    fn of(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::HS256 => Some(Self::Hmac),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(Self::Rsa),
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => Some(Self::Rsa),
            Algorithm::ES256 | Algorithm::ES384 => Some(Self::Ec),
            // HS384/HS512 and EdDSA are not offered; a token claiming them is refused.
            _ => None,
        }
    }
}

struct Key {
    family: Family,
    kid: Option<String>,
    key: DecodingKey,
}

pub struct Authenticator {
    keys: Vec<Key>,
    dev_auth: bool,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// Reads the configured keys; an unreadable key file stops the node from starting.
    pub fn new(
        jwt_secret: Option<&str>,
        jwt: &JwtOptions,
        dev_auth: bool,
    ) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(s) = jwt_secret {
            keys.push(Key {
                family: Family::Hmac,
                kid: None,
                key: DecodingKey::from_secret(s.as_bytes()),
            });
        }
        if let Some(path) = &jwt.public_key {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Key {
                    family: Family::Rsa,
                    kid: None,
                    key: k,
                }
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                Key {
                    family: Family::Ec,
                    kid: None,
                    key: k,
                }
            } else {
                return Err(KeyError::Pem { path: path.clone() });
            };
            keys.push(key);
        }
        if let Some(path) = &jwt.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| KeyError::Jwks {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for jwk in &set.keys {
                let family = match jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwks {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                keys.push(Key {
                    family,
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        Ok(Self {
            keys,
            dev_auth,
            leeway: jwt.leeway_secs,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
        })
    }

    /// Verifies a token against the key of its algorithm's family (and `kid`, when given): at
    /// the upgrade, and for a session's `refresh`.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::Invalid("this node accepts no tokens".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let family = Family::of(header.alg).ok_or_else(|| {
            AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg))
        })?;
        let key = self
            .keys
            .iter()
            .filter(|k| k.family == family)
            .find(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => self.keys.iter().filter(|k| k.family == family).count() == 1,
                (None, _) => true,
            })
            .ok_or_else(|| AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)))?;
        let mut v = Validation::new(header.alg);
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.leeway;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let user = UserId::parse(&data.claims.sub).map_err(AuthError::BadSubject)?;
        let exp = data.claims.exp;
        Ok(Verified {
            user,
            exp,
            ends: exp.saturating_add(self.leeway),
            watch: watch_claim(data.claims.watch.as_ref()),
        })
    }

    /// Who the upgrade request `req` speaks for: a bearer token (header or `?token=`) or, with
    /// dev auth, `?user=`; plus an optional `?device=`.
    pub fn authenticate(&self, req: &RequestHead) -> Result<Principal, AuthError> {
        let query: HashMap<String, String> =
            actix_web::web::Query::<HashMap<String, String>>::from_query(
                req.uri.query().unwrap_or(""),
            )
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

        let (user, expires, watch) = match token {
            Some(token) if !self.keys.is_empty() || !self.dev_auth => {
                let v = self.verify(token)?;
                (v.user, Some(v.ends), v.watch)
            }
            _ if self.dev_auth => match query.get("user") {
                Some(u) => {
                    // No token, no claim: dev auth trusts the client for who it is, so it
                    // takes what it may watch from the query as well.
                    let watch = match query.get("watch") {
                        None => Vec::new(),
                        Some(list) => list
                            .split(',')
                            .filter(|w| !w.is_empty())
                            .map(UserId::parse)
                            .collect::<Result<_, _>>()
                            .map_err(AuthError::BadDevWatch)?,
                    };
                    (
                        UserId::parse(u).map_err(AuthError::BadDevUser)?,
                        None,
                        watch,
                    )
                }
                None => return Err(AuthError::Missing),
            },
            _ => return Err(AuthError::Missing),
        };
        Ok(Principal {
            user,
            device,
            expires,
            watch,
        })
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

    #[derive(Serialize)]
    struct WithWatch<'a> {
        sub: &'a str,
        exp: u64,
        watch: serde_json::Value,
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

    fn hs256(secret: &str) -> Authenticator {
        let opts = JwtOptions {
            leeway_secs: 5,
            ..Default::default()
        };
        Authenticator::new(Some(secret), &opts, false).expect("an HS256 secret is always usable")
    }

    #[test]
    fn accepts_a_valid_token_in_header_or_query() {
        let a = hs256("k");
        let t = token("k", "alice", now() + 60);
        let req = TestRequest::get()
            .uri("/ws?device=phone")
            .insert_header(("Authorization", format!("Bearer {t}")))
            .to_http_request();
        let p = a.authenticate(req.head()).expect("valid");
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(p.device.as_deref(), Some("phone"));
        let ends = p.expires.expect("a token session ends");
        assert!(
            (now() + 60..=now() + 65).contains(&ends),
            "ends at exp plus the leeway: {ends}"
        );
        let req = TestRequest::get()
            .uri(&format!("/ws?token={t}"))
            .to_http_request();
        assert!(a.authenticate(req.head()).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = hs256("k");
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
            assert!(a.authenticate(req.head()).is_err(), "accepted {t}");
        }
        let req = TestRequest::get().uri("/ws?user=alice").to_http_request();
        assert!(matches!(
            a.authenticate(req.head()),
            Err(AuthError::Missing)
        ));
    }

    #[test]
    fn the_watch_claim_grants_only_valid_ids_and_never_spoils_the_token() {
        let a = hs256("k");
        let mint = |watch: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &WithWatch {
                    sub: "alice",
                    exp: now() + 60,
                    watch,
                },
                &EncodingKey::from_secret(b"k"),
            )
            .expect("encode")
        };
        let v = a
            .verify(&mint(serde_json::json!(["bob", "bad id!", 7, "carol"])))
            .expect("valid");
        let names: Vec<&str> = v.watch.iter().map(UserId::as_str).collect();
        assert_eq!(names, ["bob", "carol"]);
        let v = a
            .verify(&mint(serde_json::json!("bob")))
            .expect("a claim of the wrong shape grants nothing, the token stays good");
        assert!(v.watch.is_empty());
        let v = a.verify(&token("k", "alice", now() + 60)).expect("valid");
        assert!(v.watch.is_empty(), "no claim, nothing to watch");
    }

    #[test]
    fn dev_auth_takes_the_watch_list_from_the_query() {
        let a = Authenticator::new(None, &JwtOptions::default(), true).expect("keys");
        let req = TestRequest::get()
            .uri("/ws?user=alice&watch=bob,carol")
            .to_http_request();
        let p = a.authenticate(req.head()).expect("dev");
        let names: Vec<&str> = p.watch.iter().map(UserId::as_str).collect();
        assert_eq!(names, ["bob", "carol"]);
        let req = TestRequest::get()
            .uri("/ws?user=alice&watch=bob,b%20b")
            .to_http_request();
        assert!(matches!(
            a.authenticate(req.head()),
            Err(AuthError::BadDevWatch(_))
        ));
    }

    #[test]
    fn dev_auth_takes_user_from_query() {
        let a = Authenticator::new(None, &JwtOptions::default(), true).expect("keys");
        let req = TestRequest::get().uri("/ws?user=bob").to_http_request();
        let p = a.authenticate(req.head()).expect("dev");
        assert_eq!(p.user.as_str(), "bob");
        assert_eq!(p.expires, None, "a dev session never expires");
        let req = TestRequest::get().uri("/ws?user=b%20b").to_http_request();
        assert!(a.authenticate(req.head()).is_err());
        let req = TestRequest::get()
            .uri("/ws?user=bob&device=a%20b")
            .to_http_request();
        assert!(matches!(
            a.authenticate(req.head()),
            Err(AuthError::BadDevice)
        ));
    }
}
