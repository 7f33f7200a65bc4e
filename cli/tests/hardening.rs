//! Regression tests for the server-side findings of the adversarial review (issue 17):
//! connection limits, list filters, fail-closed revocation, what health shows, the
//! public base of signed URLs, and worker records left by a previous process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jobs::ports::{LaunchError, LaunchedWorker, Launcher, SystemClock, WorkerPhase, WorkerRecord};
use serde_json::{Value, json};
use serverless_comfyui::dev::{DevApp, DevConfig};
use serverless_comfyui::serve::ServeLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// A small valid workflow, embedded (tests read no files outside the repository).
fn invert_job() -> Value {
    json!({ "workflow": {
        "1": { "class_type": "EmptyImage",
               "inputs": { "width": 64, "height": 64, "batch_size": 1, "color": 16711680 } },
        "2": { "class_type": "ImageInvert", "inputs": { "image": ["1", 0] } },
        "3": { "class_type": "SaveImage",
               "inputs": { "images": ["2", 0], "filename_prefix": "invert" } }
    }})
}

/// Serves a fresh app on a random loopback port with the given limits.
async fn serve_with(limits: ServeLimits) -> (std::net::SocketAddr, TestApp) {
    let t = TestApp::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = t.app.router();
    tokio::spawn(serverless_comfyui::serve::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    (address, t)
}

/// Reads until the peer closes (Ok) or the deadline passes (Err), returning the bytes.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Err(got),
        }
    }
}

async fn health_over(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /api/v2/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(stream, Duration::from_secs(5))
        .await
        .expect("an answer");
    String::from_utf8_lossy(&reply).into_owned()
}

/// M1: half a request line is not held forever; neither is an idle keep-alive
/// connection. Both close within the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_idle_connections_are_closed_at_the_header_timeout() {
    let (address, _t) = serve_with(ServeLimits {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 64,
    })
    .await;
    let started = Instant::now();
    let mut partial = TcpStream::connect(address).await.unwrap();
    partial.write_all(b"GET /api/v2/hea").await.unwrap();
    let mut silent = TcpStream::connect(address).await.unwrap();
    let closed = read_until_closed(&mut partial, Duration::from_secs(4)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request is still held after 4 s"
    );
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(4))
            .await
            .is_ok()
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // After a full exchange, an idle keep-alive connection closes too.
    let mut keep_alive = TcpStream::connect(address).await.unwrap();
    keep_alive
        .write_all(b"GET /api/v2/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut keep_alive, Duration::from_secs(4))
        .await
        .expect("the idle keep-alive connection closes");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

/// M1: beyond the connection cap the server stops accepting; the next connection is
/// served as soon as one of the others closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (address, _t) = serve_with(ServeLimits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: 2,
    })
    .await;
    let first = TcpStream::connect(address).await.unwrap();
    let _second = TcpStream::connect(address).await.unwrap();
    // Let the server take both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(address).await.unwrap();
    third
        .write_all(b"GET /api/v2/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "connection 3 was served beyond a cap of 2");
    drop(first);
    let reply = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    // And the server still answers new connections.
    let mut fourth = TcpStream::connect(address).await.unwrap();
    assert!(health_over(&mut fourth).await.starts_with("HTTP/1.1 200"));
}

/// M4: at most 16 metadata filters; more is a 400 envelope, not a 503 from SQLite.
#[tokio::test]
async fn more_than_sixteen_list_filters_is_a_400() {
    let t = TestApp::new();
    let query = |n: usize| {
        (0..n)
            .map(|i| format!("metadata[k{i}]=v"))
            .collect::<Vec<_>>()
            .join("&")
    };
    assert_eq!(
        t.get(&format!("/api/v2/jobs?{}", query(16))).await.status,
        StatusCode::OK
    );
    for n in [17, 999] {
        let reply = t.get(&format!("/api/v2/jobs?{}", query(n))).await;
        assert_envelope(&reply, StatusCode::BAD_REQUEST, "invalid_metadata_filter");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("16"),
            "{}",
            reply.body
        );
    }
}

/// L2: revoking the last key does not make a loopback `dev` anonymous again; only
/// deleting the key records (an explicit operator act) and a restart do.
#[tokio::test]
async fn revoking_the_last_key_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    let t = TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir);
    let (key, mut record) = t.create_key("team").await;
    record.revoked_at = Some(chrono::Utc::now());
    let store = t.app.state.jobs.ports().store.clone();
    store.put_api_key(&record).await.unwrap();
    // Past the authenticator's one-second cache.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_envelope(
        &t.get("/api/v2/jobs").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_envelope(
        &t.send_as(Some(&key), empty_request("GET", "/api/v2/jobs"))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(t.get("/api/v2/health").await.body["auth"]["required"], true);
    // A restart over the same data dir stays closed.
    let again = DevApp::build(&config, Arc::new(SystemClock)).unwrap();
    use tower::ServiceExt;
    let reply = again
        .router()
        .oneshot(empty_request("GET", "/api/v2/jobs"))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    // The operator purges the keys: a fresh start is keyless again.
    assert_eq!(store.delete_all_api_keys().await.unwrap(), 1);
    let reopened = DevApp::build(&config, Arc::new(SystemClock)).unwrap();
    let reply = reopened
        .router()
        .oneshot(empty_request("GET", "/api/v2/jobs"))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

fn with_comfyui(urls: &[&str], dir: &std::path::Path) -> DevConfig {
    DevConfig {
        data_dir: dir.join("data"),
        comfyui_urls: urls.iter().map(|u| u.to_string()).collect(),
        runner: Some(local::launcher::RunnerCommand {
            program: "/bin/false".into(),
            args: vec![],
        }),
        ..DevConfig::default()
    }
}

/// L3: health shows ComfyUI's URLs only to an authenticated caller, and never the
/// credentials in them.
#[tokio::test]
async fn health_hides_comfyui_urls_from_anonymous_callers_and_credentials_from_all() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_comfyui(&["http://admin:hunter2@10.0.0.5:8188/"], dir.path());
    let t = TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir);
    // Keyless loopback: everyone is the default tenant, so the URL shows, without
    // its userinfo.
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.body["comfyui"]["mode"], "real");
    assert_eq!(
        health.body["comfyui"]["urls"],
        json!(["http://10.0.0.5:8188/"])
    );
    assert!(!health.body.to_string().contains("hunter2"));
    // With keys, an anonymous caller sees the mode but no URL; a key holder sees it.
    let (key, _) = t.create_key("team").await;
    let anonymous = t.get("/api/v2/health").await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.body["comfyui"]["mode"], "real");
    assert!(
        anonymous.body["comfyui"].get("urls").is_none(),
        "{}",
        anonymous.body
    );
    assert!(!anonymous.body.to_string().contains("10.0.0.5"));
    let holder = t
        .send_as(Some(&key), empty_request("GET", "/api/v2/health"))
        .await;
    assert_eq!(
        holder.body["comfyui"]["urls"],
        json!(["http://10.0.0.5:8188/"])
    );
    assert!(!holder.body.to_string().contains("hunter2"));
}

/// L3: the built-in simulator says in health that it has no authentication.
#[tokio::test]
async fn health_says_the_simulator_has_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_comfyui(&["http://127.0.0.1:40001"], dir.path());
    config.simulator_started = true;
    let t = TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir);
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.body["comfyui"]["mode"], "simulated");
    assert!(
        health.body["comfyui"]["auth"]
            .as_str()
            .unwrap()
            .starts_with("none"),
        "{}",
        health.body
    );
}

/// Signed URLs of a server listening on `0.0.0.0` name a reachable host.
#[tokio::test]
async fn signed_urls_of_an_unspecified_listen_address_name_loopback() {
    assert_eq!(
        serverless_comfyui::dev::public_base("0.0.0.0:8787".parse().unwrap()),
        "http://127.0.0.1:8787"
    );
    assert_eq!(
        serverless_comfyui::dev::public_base("[::]:8787".parse().unwrap()),
        "http://[::1]:8787"
    );
    assert_eq!(
        serverless_comfyui::dev::public_base("192.168.1.4:80".parse().unwrap()),
        "http://192.168.1.4:80"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        listen: "0.0.0.0:8787".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    let t = TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir);
    let (key, _) = t.create_key("team").await;
    let bytes = vec![9u8; 100_000];
    let upload = t.upload(Some(&key), &bytes, "big.png", &[]).await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.body);
    let url = upload.body["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:8787/"), "{url}");
}

/// A launcher that counts launches and starts nothing; `.1` lists the workers it
/// reports as exited.
#[derive(Default)]
struct CountingLauncher(AtomicU32, std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Launcher for CountingLauncher {
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        let n = self.0.fetch_add(count, Ordering::SeqCst);
        Ok((0..count)
            .map(|i| LaunchedWorker {
                id: format!("runner-test-{}", n + i),
                detail: "test".into(),
            })
            .collect())
    }

    async fn stop(&self, _worker_id: &str) -> Result<(), LaunchError> {
        Ok(())
    }

    fn exited(&self) -> Vec<String> {
        std::mem::take(&mut *self.1.lock().unwrap())
    }

    fn kind(&self) -> &'static str {
        "counting"
    }
}

/// A runner that refuses jobs (its image lacks a promised custom node class) counts as
/// live: a replacement would run the same image and refuse too, so none is launched.
#[tokio::test]
async fn a_refusing_runner_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    let launcher = Arc::new(CountingLauncher::default());
    let app =
        DevApp::build_with_launcher(&config, Arc::new(SystemClock), Some((launcher.clone(), 1)))
            .unwrap();
    let now = chrono::Utc::now();
    app.state
        .jobs
        .ports()
        .store
        .put_worker(&WorkerRecord {
            v: jobs::model::SCHEMA_VERSION,
            id: "runner-refusing".into(),
            phase: WorkerPhase::Refusing,
            heartbeat_at: now,
            launched_at: now,
            detail: "custom node classes missing from ComfyUI: ImageResizeKJ".into(),
        })
        .await
        .unwrap();
    let t = TestApp::from_app(app, dir);
    assert_eq!(t.submit(&invert_job()).await.status, StatusCode::CREATED);
    let report = t.app.dispatcher.scale().await.unwrap();
    assert_eq!((report.live, report.launched), (1, 0), "{report:?}");
    assert_eq!(launcher.0.load(Ordering::SeqCst), 0);
}

/// After a restart, the previous process's worker record (its runner died with it)
/// does not hold the first job back until it goes stale.
#[tokio::test]
async fn a_restart_forgets_the_previous_process_workers() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    // The previous process: a busy runner that reported a moment ago.
    {
        let previous = DevApp::build(&config, Arc::new(SystemClock)).unwrap();
        let now = chrono::Utc::now();
        previous
            .state
            .jobs
            .ports()
            .store
            .put_worker(&WorkerRecord {
                v: jobs::model::SCHEMA_VERSION,
                id: "runner-01PREVIOUS".into(),
                phase: WorkerPhase::Busy,
                heartbeat_at: now,
                launched_at: now,
                detail: "gpu-runner pid 1".into(),
            })
            .await
            .unwrap();
    }
    let launcher = Arc::new(CountingLauncher::default());
    let app =
        DevApp::build_with_launcher(&config, Arc::new(SystemClock), Some((launcher.clone(), 1)))
            .unwrap();
    assert_eq!(app.forget_previous_runners().await.unwrap(), 1);
    let t = TestApp::from_app(app, dir);
    assert_eq!(t.submit(&invert_job()).await.status, StatusCode::CREATED);
    let report = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(report.launched, 1, "{report:?}");
    assert_eq!(launcher.0.load(Ordering::SeqCst), 1);
}

/// A running job whose runner died without a word (SIGKILL, a crash: its lease lapsed
/// and no worker is left) is demand: the tick starts a runner to take it over. Found by
/// the `chaos_dev` test: only queued jobs counted, so such a job stayed `running`
/// forever once no other work was queued.
#[tokio::test]
async fn a_job_whose_runner_died_brings_up_a_runner() {
    use jobs::lifecycle::Move;
    use jobs::model::{JobId, JobStatus};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(jobs::ports::ManualClock::new(chrono::Utc::now()));
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    let launcher = Arc::new(CountingLauncher::default());
    let app =
        DevApp::build_with_launcher(&config, clock.clone(), Some((launcher.clone(), 1))).unwrap();
    let t = TestApp::from_app(app, dir);
    let id = t.submit(&invert_job()).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = t.app.state.jobs.ports().store.clone();
    let job = store
        .get_job(&JobId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let claim = Move::Claim {
        runner: "runner-killed".into(),
        lease: chrono::Duration::seconds(30),
        max_attempts: 3,
    };
    let running = jobs::service::apply_move(store.as_ref(), clock.as_ref(), job, &claim)
        .await
        .unwrap();
    assert_eq!(running.status, JobStatus::Running);
    clock.advance(chrono::Duration::seconds(31));
    let report = t.app.dispatcher.tick().await;
    let launched = report.scale.as_ref().map(|s| s.launched);
    assert_eq!(launched, Some(1), "{report:?}");
    assert_eq!(launcher.0.load(Ordering::SeqCst), 1);
}

/// A runner the launcher saw exit (SIGKILLed: no deregistration) stops counting as
/// capacity at once, so the next decision starts another rather than waiting minutes
/// for its record to go stale. Found by the `chaos_dev` test.
#[tokio::test]
async fn a_runner_seen_exiting_is_replaced_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        ..DevConfig::default()
    };
    let launcher = Arc::new(CountingLauncher::default());
    let app =
        DevApp::build_with_launcher(&config, Arc::new(SystemClock), Some((launcher.clone(), 1)))
            .unwrap();
    let t = TestApp::from_app(app, dir);
    assert_eq!(t.submit(&invert_job()).await.status, StatusCode::CREATED);
    let first = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(first.launched, 1, "{first:?}");
    // It dies before taking the job; the launcher reaps it.
    launcher.1.lock().unwrap().push("runner-test-0".into());
    let second = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(second.launched, 1, "{second:?}");
    assert_eq!(launcher.0.load(Ordering::SeqCst), 2);
    let workers = t.app.state.jobs.ports().store.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].id, "runner-test-1");
}

/// M1: the server's own loop keeps graceful shutdown: on the signal it stops
/// accepting, lets idle keep-alive connections go, and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let t = TestApp::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serverless_comfyui::serve::serve(
        listener,
        t.app.router(),
        ServeLimits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 16,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut keep_alive = TcpStream::connect(address).await.unwrap();
    keep_alive
        .write_all(b"GET /api/v2/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    keep_alive.read_exact(&mut buf).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once connections are done")
        .unwrap();
    assert!(
        read_until_closed(&mut keep_alive, Duration::from_secs(2))
            .await
            .is_ok()
    );
    assert!(
        TcpStream::connect(address).await.is_err(),
        "still accepting"
    );
}
