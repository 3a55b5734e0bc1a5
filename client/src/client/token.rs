//! Where a client's JWTs come from: a callback the app gives ([`TokenSource`]), asked at every
//! connect and again before the token expires, and when that is (`exp`, read from the token).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Why the token callback gave no token (the app's own error).
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// What the token callback returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// The app's token callback: called for the first connect, every reconnect, and before the
/// current token expires (the client then sends `refresh`, docs/protocol.md, token refresh).
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    /// A callback that fetches (or mints) a fresh token.
    ///
    /// ```
    /// use wsroute_client::TokenSource;
    /// let source = TokenSource::new(|| async { Ok::<_, wsroute_client::TokenError>("a.jwt.token".to_owned()) });
    /// # drop(source);
    /// ```
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }

    /// Always the same token (no refresh possible: the session ends at its `exp`).
    pub fn fixed(token: impl Into<String>) -> Self {
        let token: String = token.into();
        Self::new(move || {
            let t = token.clone();
            async move { Ok(t) }
        })
    }

    pub(crate) async fn get(&self) -> Result<String, TokenError> {
        (self.0)().await
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

/// A token's `exp` (unix seconds), read without checking its signature (the server checks it).
pub(crate) fn expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    serde_json::from_slice::<Claims>(&bytes).ok().map(|c| c.exp)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long from now until a token valid until `exp` should be refreshed: `before` ahead of its
/// expiry, or half its remaining life when that is shorter.
pub(crate) fn refresh_in(exp: u64, before: Duration) -> Duration {
    let left = Duration::from_secs(exp.saturating_sub(unix_now()));
    left.saturating_sub(before.min(left / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256"}"#),
            e.encode(payload)
        )
    }

    #[test]
    fn reads_exp_and_nothing_else() {
        assert_eq!(
            expiry(&jwt(r#"{"sub":"a","exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(expiry(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(expiry("not a token"), None);
        assert_eq!(expiry("a.!!!.c"), None);
    }

    #[test]
    fn refreshes_ahead_of_expiry() {
        let now = unix_now();
        let long = refresh_in(now + 3600, Duration::from_secs(60));
        assert!(long <= Duration::from_secs(3540) && long >= Duration::from_secs(3530));
        // A short-lived token: at half its life.
        let short = refresh_in(now + 4, Duration::from_secs(60));
        assert!(short <= Duration::from_secs(2), "{short:?}");
        assert_eq!(
            refresh_in(now.saturating_sub(5), Duration::from_secs(60)),
            Duration::ZERO
        );
    }
}
