//! Client tokens beyond HS256: RS256/ES256 with a PEM public key or a local JWKS file, `iss`/`aud`,
//! `nbf`, leeway; and the classic attacks refused: `alg: none`, algorithm confusion (the RSA public
//! key used as an HMAC secret), unknown `kid`.

use std::path::PathBuf;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use wsroute_tests::{Client, Cluster};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &claims, key).expect("token encodes")
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).expect("fixture"))
        .expect("rsa key")
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).expect("fixture"))
        .expect("ec key")
}

async fn status_of(c: &Cluster, token: &str) -> u16 {
    match Client::try_connect(&c.node(1).ws(&format!("?token={token}"))).await {
        Ok(_) => 101,
        Err(r) => r.status,
    }
}

fn key_node(flag: &str, file: &str, extra: &[&str]) -> impl Fn(&mut wsroute_tests::NodeOpts) {
    let mut args = vec![flag.to_owned(), fixture(file).display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    move |o| {
        o.dev_auth = false;
        o.jwt_secret = None;
        o.extra = args.clone();
    }
}

#[tokio::test]
async fn rs256_with_a_pem_key_and_the_attacks_on_it() {
    let c = Cluster::start_with(1, key_node("--jwt-public-key", "rsa-public.pem", &[])).await;
    let good = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"alice","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &good).await, 101);

    // Algorithm confusion: HS256 signed with the public key's bytes as the HMAC secret.
    let public = std::fs::read(fixture("rsa-public.pem")).expect("fixture");
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&public),
        json!({"sub":"alice","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &confused).await, 401);

    // alg: none, unsigned.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"sub":"alice","exp":now()+60}).to_string())
    );
    assert_eq!(status_of(&c, &none).await, 401);

    // Signed by another key (EC), expired, not yet valid, bad subject.
    let other = sign(
        Algorithm::ES256,
        None,
        &ec(),
        json!({"sub":"alice","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &other).await, 401);
    let expired = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"alice","exp":now()-3600}),
    );
    assert_eq!(status_of(&c, &expired).await, 401);
    let early = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"alice","exp":now()+3600,"nbf":now()+600}),
    );
    assert_eq!(status_of(&c, &early).await, 401);
    let bad_sub = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"a b","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &bad_sub).await, 401);
    // PROTOCOL 1: `exp` is required; a token that never expires is refused.
    let forever = sign(Algorithm::RS256, None, &rsa(), json!({"sub":"alice"}));
    assert_eq!(status_of(&c, &forever).await, 401);
}

#[tokio::test]
async fn es256_with_a_pem_key() {
    let c = Cluster::start_with(1, key_node("--jwt-public-key", "ec-public.pem", &[])).await;
    let good = sign(
        Algorithm::ES256,
        None,
        &ec(),
        json!({"sub":"bob","exp":now()+60}),
    );
    let bob = Client::connect(&c.node(1).ws(&format!("?token={good}"))).await;
    assert_eq!(bob.hello["user"], "bob");
    let rs = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"bob","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &rs).await, 401);
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid() {
    let c = Cluster::start_with(1, key_node("--jwks-file", "jwks.json", &[])).await;
    let good = sign(
        Algorithm::RS256,
        Some("test-rsa-1"),
        &rsa(),
        json!({"sub":"carol","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &good).await, 101);
    let unknown = sign(
        Algorithm::RS256,
        Some("rotated-away"),
        &rsa(),
        json!({"sub":"carol","exp":now()+60}),
    );
    assert_eq!(status_of(&c, &unknown).await, 401);
}

#[tokio::test]
async fn issuer_audience_and_leeway_are_checked() {
    let c = Cluster::start_with(
        1,
        key_node(
            "--jwt-public-key",
            "rsa-public.pem",
            &[
                "--jwt-issuer",
                "https://auth.example",
                "--jwt-audience",
                "chat",
                "--jwt-leeway-secs",
                "0",
            ],
        ),
    )
    .await;
    let claims = |extra: Value| {
        let mut v = json!({"sub":"dave","exp":now()+60});
        for (k, val) in extra.as_object().expect("object") {
            v[k] = val.clone();
        }
        sign(Algorithm::RS256, None, &rsa(), v)
    };
    assert_eq!(
        status_of(
            &c,
            &claims(json!({"iss":"https://auth.example","aud":"chat"}))
        )
        .await,
        101
    );
    assert_eq!(status_of(&c, &claims(json!({"aud":"chat"}))).await, 401);
    assert_eq!(
        status_of(
            &c,
            &claims(json!({"iss":"https://evil.example","aud":"chat"}))
        )
        .await,
        401
    );
    assert_eq!(
        status_of(
            &c,
            &claims(json!({"iss":"https://auth.example","aud":"other"}))
        )
        .await,
        401
    );
    // No leeway: a token that expired two seconds ago is refused.
    let stale = sign(
        Algorithm::RS256,
        None,
        &rsa(),
        json!({"sub":"dave","exp":now()-2,"iss":"https://auth.example","aud":"chat"}),
    );
    assert_eq!(status_of(&c, &stale).await, 401);
}

#[tokio::test]
async fn a_node_with_an_unreadable_key_file_refuses_to_start() {
    let redis = wsroute_tests::RedisServer::start().await;
    let out = std::process::Command::new(wsroute_tests::binary("wsroute-server"))
        .args(["--node-id", "n1", "--redis-url", &redis.url()])
        .args(["--ws-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(["--jwt-public-key", "/nonexistent/key.pem"])
        .args(["--mesh-secret", "m"])
        .env_remove("WSROUTE_JWT_SECRET")
        .env_remove("WSROUTE_DEV_AUTH")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/key.pem"), "{err}");
}
