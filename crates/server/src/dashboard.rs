//! The web dashboard (`web/`), served at `/` from the binary itself: `build.rs` embeds
//! `web/dist` (or, when it was not built, a page saying how to build it).
//!
//! The API's routes always win: the dashboard answers only requests no route took. A `GET`
//! or `HEAD` of one of its files gets that file with its content type; a `GET` of any other
//! path outside the API's prefixes that asks for HTML (a client-side route such as
//! `/vms/my-vm`, or a reload of one) gets `index.html`. Everything else stays the API's 404.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

/// One embedded file.
pub(crate) struct Asset {
    /// The URL path, from `/`.
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

/// Paths that belong to the API (REST, WebSocket, Socket.IO, metrics, the OpenAPI document):
/// never the dashboard's, even where no route matched.
const API_PREFIXES: &[&str] = &[
    "/health",
    "/ping",
    "/auth/",
    "/vm/",
    "/ws/",
    "/nodes",
    "/containers",
    "/usage",
    "/metrics",
    "/openapi.json",
    "/socket.io",
];

/// The policy of the dashboard's page: its own scripts and styles, the API on the same origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Whether this binary carries the built dashboard (not just the how-to-build page).
pub fn built() -> bool {
    BUILT
}

fn is_api(path: &str) -> bool {
    API_PREFIXES.iter().any(|p| {
        path == p.trim_end_matches('/')
            || (path.starts_with(p) && (p.ends_with('/') || path[p.len()..].starts_with('/')))
    })
}

/// Whether a GET of `path` is one of the dashboard's own files (cheap bytes from the binary,
/// so no rate limit applies to them).
pub(crate) fn is_file(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || (!is_api(path) && asset(path).is_some()))
}

fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS
        .binary_search_by(|a| a.path.cmp(path))
        .ok()
        .and_then(|i| ASSETS.get(i))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// The dashboard's answer to a request no route took, or `None` when it is not the
/// dashboard's (the caller answers 404).
pub(crate) fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    if is_api(path) {
        return None;
    }
    let index = || asset("/index.html");
    let file = match path {
        "/" | "/index.html" => index()?,
        _ => match asset(path) {
            Some(a) => a,
            // A missing file (`/assets/x.js`) is a 404, not the page.
            None if path.rsplit('/').next().is_some_and(|s| s.contains('.')) => return None,
            None if wants_html(headers) => index()?,
            None => return None,
        },
    };
    Some(respond(file))
}

fn respond(file: &Asset) -> Response {
    let mut resp = Response::new(Body::from(file.body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Vite names the files under /assets/ by their content's hash: they never change.
    let cache = if file.path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if file.content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        h
    }

    #[test]
    fn api_paths_are_never_the_dashboards() {
        for p in [
            "/health",
            "/vm/list",
            "/vm/nope",
            "/ws/vms/a",
            "/nodes",
            "/nodes/x/drain",
            "/auth/nonce",
            "/openapi.json",
            "/metrics",
            "/socket.io/",
            "/usage",
            "/containers/1",
        ] {
            assert!(is_api(p), "{p}");
            assert!(serve(&Method::GET, p, &html()).is_none(), "{p}");
        }
        for p in [
            "/",
            "/vms/a",
            "/admin/nodes",
            "/sign-in",
            "/nodesx",
            "/healthy",
        ] {
            assert!(!is_api(p), "{p}");
        }
    }

    #[test]
    fn the_page_and_client_routes_get_index_html() {
        let root = serve(&Method::GET, "/", &HeaderMap::new()).unwrap();
        assert_eq!(root.status(), StatusCode::OK);
        assert_eq!(
            root.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(root.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let route = serve(&Method::GET, "/vms/my-vm", &html()).unwrap();
        assert_eq!(route.status(), StatusCode::OK);
        // Without asking for HTML, or with another method, an unknown path is no page.
        assert!(serve(&Method::GET, "/vms/my-vm", &HeaderMap::new()).is_none());
        assert!(serve(&Method::POST, "/vms/my-vm", &html()).is_none());
        assert!(serve(&Method::DELETE, "/", &html()).is_none());
        // A missing file is a 404, never the page in its place.
        assert!(serve(&Method::GET, "/assets/missing-0000.js", &html()).is_none());
    }

    #[test]
    fn only_the_dashboards_own_files_escape_the_rate_limit() {
        assert!(is_file(&Method::GET, "/"));
        for a in ASSETS {
            assert!(is_file(&Method::GET, a.path), "{}", a.path);
            assert!(!is_file(&Method::POST, a.path), "{}", a.path);
        }
        for p in [
            "/vms/web",
            "/vm/list",
            "/nodes",
            "/assets/missing.js",
            "/metrics",
        ] {
            assert!(!is_file(&Method::GET, p), "{p}");
        }
    }

    #[test]
    fn every_embedded_file_is_served_with_its_type() {
        assert!(!ASSETS.is_empty());
        assert!(ASSETS.windows(2).all(|w| w[0].path < w[1].path));
        let index = asset("/index.html").unwrap();
        if built() {
            // Vite's page loads its hashed bundle, which is embedded too.
            let page = String::from_utf8_lossy(index.body);
            let script = page
                .split("src=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert!(asset(script).is_some(), "{script} is not embedded");
        } else {
            assert_eq!(ASSETS.len(), 1);
            assert!(String::from_utf8_lossy(index.body).contains("npm run build"));
        }
        for a in ASSETS {
            let resp = serve(&Method::GET, a.path, &HeaderMap::new()).unwrap();
            assert_eq!(resp.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            if a.path.ends_with(".js") {
                assert!(a.content_type.starts_with("text/javascript"));
            }
        }
    }
}
