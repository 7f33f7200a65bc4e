//! Which addresses a webhook may reach, and which URLs may be registered.
//!
//! One rule, [`is_public`], used twice: at registration on literal addresses
//! ([`check_url`]), and at connect time by the sender's DNS resolver on every address a
//! name resolves to (see the module docs of [`super`] for why both). Addresses that
//! embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the
//! IPv4 address they carry, so `::ffff:127.0.0.1` is loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::DomainError;

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Whether a webhook may be sent to `ip` when private addresses are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16: the metadata service lives here
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || ip.is_multicast()
        || a >= 240; // reserved, and broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (fd00:ec2::254: metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0); // discard-only 100::/64
    !refused
}

/// The IPv4 address an IPv6 one carries, where routing would reach it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail(s[6], s[7])); // ::a.b.c.d (IPv4-compatible)
    }
    if s[0] == 0x0064 && s[1] == 0xff9b {
        return Some(tail(s[6], s[7])); // NAT64 64:ff9b::/96 (and /48)
    }
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2])); // 6to4 2002:a.b.c.d::/48
    }
    None
}

/// Checks a URL a tenant registers: `http` or `https`, a host, no credentials in it,
/// bounded; and, unless `allow_private`, not a literal address [`is_public`] refuses,
/// nor `localhost`. Names are checked again when resolved, at every connect.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, DomainError> {
    let bad = |message: String| DomainError::unprocessable("invalid_webhook_url", message);
    if raw.len() > MAX_URL_BYTES {
        return Err(bad(format!("the URL is longer than {MAX_URL_BYTES} bytes")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the URL must be http or https".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "the URL may not carry credentials; verify our signature instead".into(),
        ));
    }
    let refused = |what: &str| {
        bad(format!(
            "{what} is not a public address: webhooks are not sent to loopback, private, \
             link-local or metadata addresses"
        ))
    };
    match url.host() {
        None => return Err(bad("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) if !allow_private && !is_public_v4(ip) => {
            return Err(refused(&ip.to_string()));
        }
        Some(url::Host::Ipv6(ip)) if !allow_private && !is_public_v6(ip) => {
            return Err(refused(&ip.to_string()));
        }
        Some(url::Host::Domain(name)) if !allow_private => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(refused(&name));
            }
        }
        Some(_) => {}
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> bool {
        check_url(raw, false).is_err()
    }

    /// The attacks first: every way of naming an inner address we know of.
    #[test]
    fn inner_addresses_are_refused() {
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1.2.3:8080/",
            "http://[::1]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            // Other spellings the URL parser normalises to the same addresses.
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
        ] {
            assert!(refused(url), "{url} must be refused");
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "/relative",
            "http://user:pass@example.com/",
            "gopher://example.com/",
        ] {
            assert!(refused(url), "{url} must be refused");
        }
        assert!(refused(&format!(
            "https://example.com/{}",
            "a".repeat(MAX_URL_BYTES)
        )));
    }

    #[test]
    fn public_addresses_and_names_are_accepted() {
        for url in [
            "https://example.com/hooks",
            "http://93.184.215.14:8080/x?y=1",
            "https://[2606:4700::1111]/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
        ] {
            assert!(check_url(url, false).is_ok(), "{url} must be accepted");
        }
    }

    #[test]
    fn allowing_private_addresses_lifts_only_the_address_rule() {
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        assert!(check_url("http://localhost:9000/hook", true).is_ok());
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
    }
}
