//! The try-it page: `GET /` serves a small chat page and `GET /wsroute.js` the JavaScript client
//! it uses (the files in `web/`, embedded in the binary), under a Content-Security-Policy that
//! lets the page load only itself and connect only to this host.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

/// One embedded file: the path it is served at, its content type and its text.
struct Asset(&'static str, &'static str, &'static str);

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: [Asset; 4] = [
    Asset("/", HTML, include_str!("../../../web/index.html")),
    Asset("/page.js", JS, include_str!("../../../web/page.js")),
    Asset("/page.css", CSS, include_str!("../../../web/page.css")),
    Asset("/wsroute.js", JS, include_str!("../../../web/wsroute.js")),
];

/// Registers every embedded file on the app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        cfg.route(
            asset.0,
            web::get().to(move |req: HttpRequest| async move { serve(asset, &req) }),
        );
    }
}

fn serve(&Asset(_, content_type, body): &Asset, req: &HttpRequest) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, policy(req)))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Small files, and a new binary may change them: revalidate rather than go stale.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Scripts and styles from this origin only, no inline code, no frames, and connections only
/// to this host. `'self'` covers `ws:` to the same host in current browsers; older ones need the
/// host named with `ws:`/`wss:`, which is done only when the `Host` header looks like a host, so
/// nothing else can be smuggled into the policy.
fn policy(req: &HttpRequest) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_host(h));
    let connect = match host {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `name`, `name:port`, `1.2.3.4:port` or `[::1]:port`: nothing that could end a directive.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}
