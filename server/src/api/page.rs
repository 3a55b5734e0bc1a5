//! The try-it page: `GET /` serves a small chat page (the files in `web/`) and
//! `GET /wsroute-client.js` the JavaScript client package it uses (`clients/js/`, also at its old
//! path `/wsroute.js`), all embedded in the binary, under a Content-Security-Policy that
//! lets the page load only itself and connect only to the cluster's nodes; the same nodes are
//! named in the page, the only places besides its own host that its client follows a
//! `reconnect` to.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::state::NodeState;

/// One embedded file: the path it is served at, its content type and its text.
struct Asset(&'static str, &'static str, &'static str);

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The JavaScript client: one file, one copy, in its package.
const CLIENT: &str = include_str!("../../../clients/js/wsroute-client.js");

const ASSETS: [Asset; 5] = [
    Asset("/", HTML, include_str!("../../../web/index.html")),
    Asset("/page.js", JS, include_str!("../../../web/page.js")),
    Asset("/page.css", CSS, include_str!("../../../web/page.css")),
    Asset("/wsroute-client.js", JS, CLIENT),
    // Where the client was served before it became a package; apps may still load it there.
    Asset("/wsroute.js", JS, CLIENT),
];

/// How long the page waits for the cluster's node list before it is served without it.
const NODES_LOOKUP: Duration = Duration::from_secs(1);

/// Registers every embedded file on the app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        cfg.route(
            asset.0,
            web::get().to(
                move |req: HttpRequest, state: web::Data<Arc<NodeState>>| async move {
                    // Only the page's own policy governs what it may connect to.
                    if asset.1 == HTML {
                        let nodes = node_origins(&state).await;
                        let page = with_nodes(asset.2, &nodes);
                        serve(asset, page, &policy(&req, &nodes))
                    } else {
                        serve(asset, asset.2.to_owned(), &policy(&req, &[]))
                    }
                },
            ),
        );
    }
}

/// The marker in `web/index.html` that the nodes' origins fill.
const NODES_META: &str = r#"<meta name="wsroute-nodes" content="">"#;

/// The page with the nodes' origins (checked by [`ws_origin`]: nothing that could end the
/// attribute) in its `wsroute-nodes` meta tag.
fn with_nodes(html: &str, nodes: &[String]) -> String {
    html.replacen(
        NODES_META,
        &format!(
            r#"<meta name="wsroute-nodes" content="{}">"#,
            nodes.join(" ")
        ),
        1,
    )
}

fn serve(&Asset(_, content_type, _): &Asset, body: String, policy: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, policy))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Small files, and a new binary may change them: revalidate rather than go stale.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Scripts and styles from this origin only, no inline code, no frames, and connections only
/// to this host and to the client endpoints of the cluster's live nodes (a draining node sends
/// the page's client to one of them with `reconnect`). `'self'` covers `ws:` to the same host in
/// current browsers; older ones need the host named with `ws:`/`wss:`. Hosts are checked before
/// they go into the policy, so nothing else can be smuggled into it.
fn policy(req: &HttpRequest, nodes: &[String]) -> String {
    let mut connect = vec!["'self'".to_owned()];
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_host(h))
    {
        connect.extend([format!("ws://{h}"), format!("wss://{h}")]);
    }
    for n in nodes {
        if !connect.contains(n) {
            connect.push(n.clone());
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// The `ws(s)://host:port` origins of the live nodes' public URLs; none when Redis does not
/// answer in time (the page then reaches only its own node).
async fn node_origins(state: &NodeState) -> Vec<String> {
    let nodes = match tokio::time::timeout(NODES_LOOKUP, state.known_nodes()).await {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "page served without the other nodes' origins");
            return Vec::new();
        }
        Err(_) => {
            tracing::debug!("page served without the other nodes' origins: Redis is slow");
            return Vec::new();
        }
    };
    let mut origins: Vec<String> = nodes
        .iter()
        .filter(|n| n.alive())
        .filter_map(|n| ws_origin(&n.public_url))
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// `ws://host:port/ws` -> `ws://host:port`; `None` for anything else.
fn ws_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (matches!(scheme, "ws" | "wss") && is_host(host)).then(|| format!("{scheme}://{host}"))
}

/// `name`, `name:port`, `1.2.3.4:port` or `[::1]:port`: nothing that could end a directive.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}
