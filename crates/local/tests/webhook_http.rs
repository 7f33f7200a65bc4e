//! The webhook sender against real sockets: the SSRF attacks first, then redirects,
//! timeouts and oversized answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use jobs::webhooks::ports::WebhookSender;
use local::webhook_http::{GuardedResolver, HttpSender, HttpSenderConfig, Lookup};

/// A receiver on loopback counting the requests that reach it.
async fn receiver(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn counting() -> (Router, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    (app, hits)
}

/// DNS as a test says: every name resolves to `addrs`.
fn lookup(addrs: Vec<&str>) -> Lookup {
    let addrs: Vec<SocketAddr> = addrs
        .into_iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), 0))
        .collect();
    Arc::new(move |_host| {
        let addrs = addrs.clone();
        Box::pin(async move { Ok(addrs) })
    })
}

fn config(allow_private: bool) -> HttpSenderConfig {
    HttpSenderConfig {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        allow_private,
    }
}

async fn send(sender: &HttpSender, url: &str) -> jobs::webhooks::ports::SendOutcome {
    sender
        .send(
            url,
            &[("webhook-id", "msg_1".into())],
            Bytes::from_static(b"{}"),
        )
        .await
}

#[tokio::test]
async fn a_literal_inner_address_is_refused_without_connecting() {
    let (app, hits) = counting();
    let addr = receiver(app).await;
    let sender = HttpSender::new(config(false)).unwrap();
    for url in [
        format!("http://127.0.0.1:{}/hook", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/hook", addr.port()),
        format!("http://2130706433:{}/hook", addr.port()),
    ] {
        let outcome = send(&sender, &url).await;
        assert_eq!(outcome.status, None, "{url}");
        assert!(outcome.error.unwrap().contains("not a public address"));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

/// DNS rebinding: the name resolves to loopback at connect time, whatever it resolved
/// to before. The resolver the connection uses refuses it.
#[tokio::test]
async fn a_name_that_resolves_inward_at_connect_time_is_refused() {
    let (app, hits) = counting();
    let addr = receiver(app).await;
    let sender = HttpSender::with_lookup(config(false), lookup(vec!["127.0.0.1"])).unwrap();
    let outcome = send(
        &sender,
        &format!("http://rebound.example:{}/hook", addr.port()),
    )
    .await;
    assert_eq!(outcome.status, None);
    let error = outcome.error.unwrap();
    assert!(error.contains("resolves only to addresses"), "{error}");
    // The system resolver: `localhost` is loopback too.
    let system = HttpSender::new(config(false)).unwrap();
    let outcome = send(&system, &format!("http://localhost:{}/hook", addr.port())).await;
    assert_eq!(outcome.status, None, "{:?}", outcome.error);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn a_name_with_inner_and_public_addresses_connects_only_to_public_ones() {
    let (app, hits) = counting();
    let addr = receiver(app).await;
    // Every inner kind at once: nothing is left, and the connection must not fall
    // back to one of them.
    let sender = HttpSender::with_lookup(
        config(false),
        lookup(vec![
            "169.254.169.254",
            "127.0.0.1",
            "fd00:ec2::254",
            "100.64.0.1",
            "::1",
        ]),
    )
    .unwrap();
    let outcome = send(&sender, &format!("http://mixed.example:{}/", addr.port())).await;
    assert_eq!(outcome.status, None);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // With a public address among them, only that one is offered to the connector.
    let resolver = GuardedResolver::new(
        lookup(vec!["169.254.169.254", "93.184.215.14", "::1", "10.0.0.7"]),
        Duration::from_secs(1),
    );
    let offered = resolver.public_addresses("mixed.example").await.unwrap();
    assert_eq!(
        offered,
        vec![SocketAddr::new("93.184.215.14".parse().unwrap(), 0)]
    );
}

#[tokio::test]
async fn registration_refuses_a_name_that_resolves_inward() {
    let sender = HttpSender::with_lookup(config(false), lookup(vec!["10.1.2.3"])).unwrap();
    let url = url::Url::parse("https://hooks.example.com/x").unwrap();
    let refused = sender.check_url(&url).await.unwrap_err();
    assert!(refused.contains("10.1.2.3"), "{refused}");
    let public = HttpSender::with_lookup(config(false), lookup(vec!["93.184.215.14"])).unwrap();
    assert!(public.check_url(&url).await.is_ok());
}

#[tokio::test]
async fn allowing_private_addresses_reaches_a_local_receiver() {
    let (app, hits) = counting();
    let addr = receiver(app).await;
    let sender = HttpSender::new(config(true)).unwrap();
    let outcome = send(&sender, &format!("http://localhost:{}/hook", addr.port())).await;
    assert_eq!(outcome.status, Some(200), "{:?}", outcome.error);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (inner, hits) = counting();
    let inner_addr = receiver(inner).await;
    let target = format!("http://127.0.0.1:{}/secret", inner_addr.port());
    let app = Router::new().route(
        "/hook",
        post(move || {
            let target = target.clone();
            async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, target)],
                )
            }
        }),
    );
    let addr = receiver(app).await;
    let sender = HttpSender::new(config(true)).unwrap();
    let outcome = send(&sender, &format!("http://127.0.0.1:{}/hook", addr.port())).await;
    assert_eq!(
        outcome.status,
        Some(302),
        "a 3xx is the answer, not followed"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_a_huge_answer_is_not_read() {
    let app = Router::new()
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route(
            "/huge",
            post(|| async {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures::stream::repeat(chunk)
                    .take(16 * 1024) // 1 GiB
                    .map(Ok::<_, std::io::Error>);
                axum::body::Body::from_stream(stream)
            }),
        )
        .route("/", get(|| async { "" }));
    let addr = receiver(app).await;
    let sender = HttpSender::new(config(true)).unwrap();
    let started = Instant::now();
    let outcome = send(&sender, &format!("http://127.0.0.1:{}/slow", addr.port())).await;
    assert_eq!(outcome.status, None);
    assert!(outcome.error.unwrap().contains("timed out"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let started = Instant::now();
    let outcome = send(&sender, &format!("http://127.0.0.1:{}/huge", addr.port())).await;
    assert_eq!(outcome.status, Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the answer is dropped after a few KiB, not read to its end"
    );
}

use futures::StreamExt;
