//! What a `--redis-url` names: one server (`redis://`, `rediss://`), a Redis Cluster
//! (`redis+cluster://`) or the primary a set of Sentinels watches (`redis+sentinel://`).

use redis::IntoConnectionInfo;

/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The scheme of a Redis Sentinel URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// What `--redis-url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://` or `rediss://` (TLS), as redis-rs reads it.
    Server(String),
    /// A Redis Cluster: its seed servers, each as a `redis://` URL carrying the credentials.
    Cluster(Vec<String>),
    /// The primary a set of Sentinels names.
    Sentinel(SentinelTarget),
}

/// A `redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER` URL, read.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels, each as a `redis://host:port` URL.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// Credentials for the primary (and its replicas), not for the sentinels.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl SentinelTarget {
    pub(super) fn node_info(&self) -> redis::sentinel::SentinelNodeConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default();
        if let Some(u) = &self.username {
            info = info.set_username(u);
        }
        if let Some(p) = &self.password {
            info = info.set_password(p);
        }
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info)
    }
}

impl RedisTarget {
    /// Reads a `--redis-url`. Errors say what is wrong without repeating the URL (it may carry a
    /// password).
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(seeds) = cluster_seeds(url) {
            return seeds.map(Self::Cluster);
        }
        if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            return parse_sentinel(rest).map(Self::Sentinel);
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(format!(
                "a Redis URL starts with redis://, rediss://, {CLUSTER_SCHEME} or {SENTINEL_SCHEME}"
            ));
        }
        url.into_connection_info()
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        Ok(Self::Server(url.to_owned()))
    }
}

const SENTINEL_FORM: &str = "redis+sentinel://[user:password@]host:port,host:port/MASTER";

fn parse_sentinel(rest: &str) -> Result<SentinelTarget, String> {
    let Some((authority, master)) = rest.split_once('/') else {
        return Err(format!(
            "a Sentinel URL names its master after a '/': {SENTINEL_FORM}"
        ));
    };
    let master = master.strip_suffix('/').unwrap_or(master);
    if master.is_empty() {
        return Err(format!("a Sentinel URL names its master: {SENTINEL_FORM}"));
    }
    if master.contains(['/', '?', '#']) || master.chars().any(char::is_whitespace) {
        return Err(format!(
            "{master:?} is not a master name (one word after the hosts): {SENTINEL_FORM}"
        ));
    }
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let port = host
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none() {
            return Err(format!(
                "{host:?} is not host:port (a sentinel): {SENTINEL_FORM}"
            ));
        }
        let url = format!("redis://{host}");
        url.as_str()
            .into_connection_info()
            .map_err(|e| format!("{host:?} is not a sentinel address: {e}"))?;
        sentinels.push(url);
    }
    // The user-info read as redis-rs reads it in a redis:// URL (percent-decoded).
    let (username, password) = match auth {
        None => (None, None),
        Some(auth) => {
            let info = format!("redis://{auth}@localhost")
                .into_connection_info()
                .map_err(|_| {
                    "the user-info of the Sentinel URL is not user:password (percent-encode reserved characters)".to_owned()
                })?;
            let settings = info.redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        }
    };
    Ok(SentinelTarget {
        sentinels,
        master: master.to_owned(),
        username,
        password,
    })
}

/// The seed servers of a `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` URL, each as a `redis://`
/// URL carrying the credentials; `None` when `url` is not a cluster URL.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    Some(if seeds.is_empty() {
        Err("a cluster URL names its nodes: redis+cluster://host:port,host:port".to_owned())
    } else if let Some(bad) = hosts.split(',').find(|h| h.contains('/')) {
        Err(format!("{bad:?} is not host:port (a cluster node)"))
    } else {
        Ok(seeds)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(cluster_seeds("redis://h:1"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2/"),
            Some(Ok(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@a:1,b:2"),
            Some(Ok(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()]))
        );
        assert!(matches!(cluster_seeds("redis+cluster://"), Some(Err(_))));
        assert!(matches!(
            cluster_seeds("redis+cluster://a:1/0,b:2"),
            Some(Err(_))
        ));
    }

    fn sentinel(url: &str) -> SentinelTarget {
        match RedisTarget::parse(url) {
            Ok(RedisTarget::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_credentials() {
        let s = sentinel("redis+sentinel://a:26379,b:26380/mymaster");
        assert_eq!(s.sentinels, ["redis://a:26379", "redis://b:26380"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!((s.username, s.password), (None, None));

        let s = sentinel("redis+sentinel://:s3cret@127.0.0.1:1/primary/");
        assert_eq!(s.sentinels, ["redis://127.0.0.1:1"]);
        assert_eq!(s.master, "primary");
        assert_eq!((s.username, s.password), (None, Some("s3cret".into())));

        let s = sentinel("redis+sentinel://app:p%40ss@h:1, h2:2/m");
        assert_eq!(s.sentinels, ["redis://h:1", "redis://h2:2"]);
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "Debug hides the password"
        );
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong_without_the_password() {
        for (url, says) in [
            ("redis+sentinel://h:1", "master"),
            ("redis+sentinel://h:1/", "master"),
            ("redis+sentinel:///m", "host:port"),
            ("redis+sentinel://h/m", "host:port"),
            ("redis+sentinel://h:1,,h:2/m", "host:port"),
            ("redis+sentinel://h:99999/m", "host:port"),
            ("redis+sentinel://:pw@h:1/m/0", "master name"),
            ("redis+sentinel://:pw@h:1/a b", "master name"),
        ] {
            let e = RedisTarget::parse(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }

    #[test]
    fn urls_name_their_kind() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Ok(RedisTarget::Server("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            RedisTarget::parse("rediss://:pw@cache.example:6380/0"),
            Ok(RedisTarget::Server(
                "rediss://:pw@cache.example:6380/0".into()
            ))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://a:1"),
            Ok(RedisTarget::Cluster(_))
        ));
        let e = RedisTarget::parse("http://:pw@h:1").expect_err("not redis");
        assert!(e.contains("redis+sentinel://") && !e.contains("pw"), "{e}");
    }
}
