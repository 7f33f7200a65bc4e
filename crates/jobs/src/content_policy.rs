//! How stored bytes are served: the one place that decides what a browser may render
//! from the API's origin.
//!
//! An asset keeps the `content_type` its uploader declared (the API reports it as
//! given), but bytes are *served* inline only when that type is passive: raster images,
//! audio, video and `text/plain`. Anything else (HTML, SVG, XML, PDF, JSON, scripts...)
//! could run script in the API's origin, so it is served as
//! `application/octet-stream` with `Content-Disposition: attachment`. Every blob
//! response also carries `X-Content-Type-Options: nosniff`, so a browser never
//! second-guesses the type, and a sandboxing `Content-Security-Policy`, so even a
//! document rendered by mistake has no origin and may load nothing.
//!
//! The same rule shapes signed URLs ([`served_type`] is what a URL is signed with), so
//! an object store that serves presigned GETs itself gets the same answer. The API sets
//! the headers from these answers (`crate::api`'s content module).

/// The policy sent with every blob: no scripts, no plugins, no origin. Inline styles
/// stay allowed so a browser's own image and media viewers render as usual.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// What non-passive bytes are served as.
pub const OPAQUE_TYPE: &str = "application/octet-stream";

/// Raster image types a browser displays without running anything.
const INLINE_IMAGES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
];

/// A media type token (RFC 9110 §5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The type's essence (`type/subtype`, lowercase) and its `charset`, if well formed.
fn parse(declared: &str) -> Option<(String, Option<String>)> {
    let mut parts = declared.split(';');
    let essence = parts.next()?.trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/')?;
    if !is_token(kind) || !is_token(subtype) {
        return None;
    }
    let charset = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        let value = value.trim().trim_matches('"');
        (name.trim().eq_ignore_ascii_case("charset") && is_token(value))
            .then(|| value.to_ascii_lowercase())
    });
    Some((essence, charset))
}

/// Whether bytes declared as `declared` may be rendered inline.
pub fn is_inline(declared: &str) -> bool {
    match parse(declared) {
        Some((essence, _)) => {
            INLINE_IMAGES.contains(&essence.as_str())
                || essence.starts_with("audio/")
                || essence.starts_with("video/")
                || essence == "text/plain"
        }
        None => false,
    }
}

/// The `Content-Type` to serve bytes declared as `declared` with: a passive type in its
/// canonical form, anything else [`OPAQUE_TYPE`].
pub fn served_type(declared: &str) -> String {
    match parse(declared) {
        Some((essence, charset)) if is_inline(declared) => {
            if essence == "text/plain" {
                format!(
                    "text/plain; charset={}",
                    charset.as_deref().unwrap_or("utf-8")
                )
            } else {
                essence
            }
        }
        _ => OPAQUE_TYPE.to_string(),
    }
}

/// A file name safe in a quoted `Content-Disposition` parameter: the last path segment,
/// with anything but ASCII letters, digits, `.`, `-` and `_` replaced.
pub fn safe_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if cleaned.trim_matches(['.', '_']).is_empty() {
        "download".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passive_types_are_inline() {
        for inline in [
            "image/png",
            "IMAGE/PNG",
            "image/jpeg",
            "image/webp; q=1",
            "image/avif",
            "image/bmp",
            "image/gif",
            "audio/wav",
            "audio/mpeg",
            "video/mp4",
            "text/plain",
            "text/plain; charset=latin1",
        ] {
            assert!(is_inline(inline), "{inline}");
        }
        for active in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "application/pdf",
            "application/json",
            "text/javascript",
            "text/css",
            "multipart/x-mixed-replace",
            "image/x-icon",
            "image/",
            "video/mp4<script>",
            "nonsense",
            "",
        ] {
            assert!(!is_inline(active), "{active}");
            assert_eq!(served_type(active), OPAQUE_TYPE, "{active}");
        }
    }

    #[test]
    fn served_types_are_canonical() {
        assert_eq!(served_type("Image/PNG"), "image/png");
        assert_eq!(served_type("image/png; foo=bar"), "image/png");
        assert_eq!(served_type("text/plain"), "text/plain; charset=utf-8");
        assert_eq!(
            served_type("text/plain; Charset=\"ISO-8859-1\""),
            "text/plain; charset=iso-8859-1"
        );
        assert_eq!(
            served_type("text/plain; charset=\"a b\""),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(safe_filename("a/b/page.html"), "page.html");
        assert_eq!(safe_filename("x\"; y=\"z.svg"), "x___y__z.svg");
        assert_eq!(safe_filename("résumé.pdf"), "r_sum_.pdf");
        assert_eq!(safe_filename("..\\..\\evil.exe"), "evil.exe");
        assert_eq!(safe_filename(""), "download");
        assert_eq!(safe_filename(".."), "download");
        assert_eq!(safe_filename(&"a".repeat(500)).len(), 128);
    }
}
