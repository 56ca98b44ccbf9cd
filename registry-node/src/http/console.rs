//! The web console at `/ui/`: hand-written HTML, CSS and script (`registry-node/ui/`)
//! embedded in the binary, so every node with the session role serves it with no other step
//! and no network. The page talks to the public API of the node that served it, with the
//! tab's bearer token; the assets themselves hold nothing secret and need none.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/console.js"),
    },
];

/// Only this node's own assets and API; no inline script, no framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `/ui` (redirects to `/ui/`), `/ui/` and `/ui/{asset}`: merge into the public router.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{asset}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move { serve(&name, &headers) }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::NotFound(format!("the console has no file {name:?}")).into_response();
    };
    // Revalidated on every load (an upgraded node serves its own console at once), and
    // answered 304 while unchanged.
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(asset.body));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let res = router()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_their_types() {
        let (status, headers, body) = get("/ui/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(String::from_utf8(body)
            .expect("utf-8")
            .contains("console.js"));
        for (path, ty) in [
            ("/ui/console.js", "text/javascript; charset=utf-8"),
            ("/ui/console.css", "text/css; charset=utf-8"),
            ("/ui/index.html", "text/html; charset=utf-8"),
        ] {
            let (status, headers, body) = get(path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn ui_without_slash_redirects_and_unknown_files_are_404() {
        let (status, headers, _) = get("/ui", None).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(headers[header::LOCATION], "/ui/");
        for path in ["/ui/nope.js", "/ui/..%2Fsrc%2Fmain.rs", "/ui/%2e%2e"] {
            let (status, _, body) = get(path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            let err: serde_json::Value = serde_json::from_slice(&body).expect("error shape");
            assert_eq!(err["error"]["code"], "not_found");
        }
    }

    #[tokio::test]
    async fn an_unchanged_asset_is_answered_304() {
        let (_, headers, _) = get("/ui/console.js", None).await;
        let tag = headers[header::ETAG].to_str().expect("etag").to_owned();
        let (status, _, body) = get("/ui/console.js", Some(&tag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        let (status, _, _) = get("/ui/console.js", Some("\"other\"")).await;
        assert_eq!(status, StatusCode::OK);
    }

    /// Works offline: nothing is loaded from another origin (no CDN, no web fonts).
    #[test]
    fn assets_load_nothing_from_elsewhere() {
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).expect("utf-8");
            for needle in [
                "http://",
                "https://",
                "url(//",
                "src=\"//",
                "href=\"//",
                "@import",
            ] {
                assert!(!text.contains(needle), "{} contains {needle}", a.name);
            }
        }
    }
}
