//! Webhooks end to end: the routes and their refusals, deliveries to a real HTTP
//! receiver that checks every signature with its own HMAC (not our signing code),
//! retries until accepted exactly once, and a `dev` killed between a job's end and
//! its delivery that delivers after restart.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestApp, assert_envelope, workflow};
use hmac::{Hmac, Mac};
use jobs::ports::SystemClock;
use jobs::webhooks::backoff::Backoff;
use jobs::webhooks::deliver::DeliveryConfig;
use serde_json::{Value, json};
use serverless_comfyui::dev::{DevApp, DevConfig};

const HOOKS: &str = "/api/v2/x-serverless-comfyui/webhooks";

// ------------------------------------------------------------------ the receiver

#[derive(Default)]
struct Seen {
    /// The signing key, once the endpoint is registered.
    key: Option<Vec<u8>>,
    /// Fail each message's first this many tries with a 500.
    fail_first: usize,
    /// Answer 503 to everything while set.
    down: bool,
    tries: HashMap<String, usize>,
    accepted: Vec<(String, Value)>,
    bad_signatures: usize,
}

/// A webhook receiver on 127.0.0.1 that verifies as Standard Webhooks says, with its
/// own HMAC: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen {
            fail_first,
            ..Seen::default()
        }));
        let state = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { receive(&state, &headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.addr.port())
    }

    fn set_secret(&self, secret: &str) {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .unwrap();
        self.seen.lock().unwrap().key = Some(key);
    }

    fn accepted(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().accepted.clone()
    }

    async fn wait_accepted(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepted().len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries accepted in {within:?}",
                self.accepted().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn receive(state: &Mutex<Seen>, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut seen = state.lock().unwrap();
    let Some(key) = seen.key.clone() else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    if !fresh || !signatures.split(' ').any(|s| s == expected) {
        seen.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let tries = {
        let n = seen.tries.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    if seen.down || tries <= seen.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    seen.accepted
        .push((id, serde_json::from_slice(body).unwrap()));
    StatusCode::NO_CONTENT
}

// ------------------------------------------------------------------ in-process app

fn quick_delivery() -> DeliveryConfig {
    DeliveryConfig {
        backoff: Backoff {
            first: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            ..Backoff::default()
        },
        lease: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        poll_every: Duration::from_millis(20),
        ..DeliveryConfig::default()
    }
}

fn app(allow_private: bool) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        webhooks_allow_private: allow_private,
        webhook_delivery: quick_delivery(),
        ..DevConfig::default()
    };
    TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir)
}

async fn create(t: &TestApp, body: Value) -> common::Reply {
    t.post_raw(HOOKS, body.to_string(), None).await
}

async fn delete(t: &TestApp, uri: &str) -> common::Reply {
    t.send(Request::delete(uri).body(Body::empty()).unwrap())
        .await
}

#[tokio::test]
async fn routes_register_list_delete_and_refuse_bad_input() {
    let t = app(false);
    for (body, status, code) in [
        (
            json!({"url": "http://127.0.0.1:9/x"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "http://[fd00:ec2::254]/"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "http://localhost:8080/"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "ftp://example.com/"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "https://u:p@example.com/"}),
            422,
            "invalid_webhook_url",
        ),
        (
            json!({"url": "https://93.184.215.14/", "events": ["job.exploded"]}),
            422,
            "invalid_event_type",
        ),
        (
            json!({"url": "https://93.184.215.14/", "events": []}),
            422,
            "invalid_event_type",
        ),
        (
            json!({"url": "https://93.184.215.14/", "labels": {"a": 1}}),
            422,
            "invalid_labels",
        ),
        (
            json!({"url": "https://93.184.215.14/", "secret": "mine"}),
            422,
            "invalid_request",
        ),
        (json!({"events": ["job.failed"]}), 422, "invalid_request"),
    ] {
        let reply = create(&t, body.clone()).await;
        assert_envelope(&reply, StatusCode::from_u16(status).unwrap(), code);
        assert!(reply.body.get("secret").is_none(), "{body}");
    }
    let not_json = t.post_raw(HOOKS, "{", None).await;
    assert_envelope(&not_json, StatusCode::BAD_REQUEST, "invalid_request");

    let created = create(
        &t,
        json!({"url": "https://93.184.215.14/hook", "labels": {"project": "owl"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        STANDARD.decode(&secret["whsec_".len()..]).unwrap().len(),
        32
    );
    assert_eq!(
        created.body["events"],
        json!(["job.succeeded", "job.failed", "job.canceled", "job.expired"])
    );
    let id = created.body["id"].as_str().unwrap().to_string();

    let listed = t.get(HOOKS).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["endpoints"][0]["id"], id.as_str());
    assert!(
        !listed.body.to_string().contains(secret)
            && listed.body["endpoints"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    // Bounded per tenant.
    for _ in 1..16 {
        let more = create(&t, json!({"url": "https://93.184.215.14/more"})).await;
        assert_eq!(more.status, StatusCode::CREATED);
    }
    let over = create(&t, json!({"url": "https://93.184.215.14/more"})).await;
    assert_envelope(&over, StatusCode::CONFLICT, "too_many_webhooks");

    let attempts = t.get(&format!("{HOOKS}/{id}/deliveries")).await;
    assert_eq!(attempts.status, StatusCode::OK);
    assert_eq!(attempts.body, json!({"attempts": []}));
    let bad_limit = t.get(&format!("{HOOKS}/{id}/deliveries?limit=0")).await;
    assert_envelope(&bad_limit, StatusCode::BAD_REQUEST, "invalid_request");
    let unknown = t.get(&format!("{HOOKS}/wh_nope/deliveries")).await;
    assert_envelope(&unknown, StatusCode::NOT_FOUND, "not_found");

    assert_eq!(
        delete(&t, &format!("{HOOKS}/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_envelope(
        &delete(&t, &format!("{HOOKS}/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        t.get(HOOKS).await.body["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        15
    );
}

/// Five failures, then success: one accepted delivery per event, every try signed,
/// the attempts visible; a job the label filter leaves out is never sent.
#[tokio::test]
async fn a_receiver_failing_five_times_gets_each_event_exactly_once() {
    let t = app(true);
    let receiver = Receiver::start(5).await;
    let created = create(
        &t,
        json!({"url": receiver.url(), "events": ["job.canceled"], "labels": {"project": "owl"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    receiver.set_secret(created.body["secret"].as_str().unwrap());
    let endpoint = created.body["id"].as_str().unwrap().to_string();

    let mut jobs = Vec::new();
    for project in ["owl", "owl", "cat"] {
        let job = t
            .submit(&json!({"workflow": workflow("invert.json"), "metadata": {"project": project}}))
            .await;
        assert_eq!(job.status, StatusCode::CREATED);
        let id = job.body["id"].as_str().unwrap().to_string();
        let canceled = t
            .post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
            .await;
        assert_eq!(canceled.body["status"], "canceled");
        jobs.push(id);
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let deliverer = tokio::spawn(t.app.deliverer().unwrap().run(stopped));
    receiver.wait_accepted(2, Duration::from_secs(30)).await;
    // Give a duplicate time to show up, were there one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    deliverer.await.unwrap();

    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "one accepted delivery per event");
    {
        let seen = receiver.seen.lock().unwrap();
        assert_eq!(seen.bad_signatures, 0);
        assert_eq!(seen.tries.len(), 2, "the cat job is filtered out");
        assert!(seen.tries.values().all(|&n| n == 6), "{:?}", seen.tries);
    }
    let mut delivered_jobs = Vec::new();
    for (_, body) in &accepted {
        assert_eq!(body["type"], "job.canceled");
        let job_id = body["data"]["id"].as_str().unwrap();
        let shown = t.get(&format!("/api/v2/jobs/{job_id}")).await;
        assert_eq!(body["data"], shown.body, "the job as GET renders it");
        assert_eq!(body["timestamp"], shown.body["completed_at"]);
        delivered_jobs.push(job_id.to_string());
    }
    delivered_jobs.sort();
    assert_eq!(delivered_jobs, jobs[..2].to_vec());

    let attempts = t
        .get(&format!("{HOOKS}/{endpoint}/deliveries?limit=100"))
        .await;
    let attempts = attempts.body["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 12);
    let codes: Vec<_> = attempts.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes.iter().filter(|c| **c == json!(204)).count(), 2);
    assert_eq!(codes.iter().filter(|c| **c == json!(500)).count(), 10);
    for a in &attempts {
        assert_eq!(a["event"], "job.canceled");
        assert!(a["latency_ms"].is_u64());
        match a["status_code"].as_u64() {
            Some(204) => {
                assert_eq!(a["state"], "delivered");
                assert!(a["next_attempt_at"].is_null());
            }
            _ => {
                assert_eq!(a["state"], "pending");
                assert!(a["next_attempt_at"].is_string());
            }
        }
    }
    assert_eq!(attempts[0]["status_code"], 204, "newest first");
    let few = t
        .get(&format!("{HOOKS}/{endpoint}/deliveries?limit=3"))
        .await;
    assert_eq!(few.body["attempts"].as_array().unwrap().len(), 3);
}

/// A receiver that never accepts: retried until the schedule's deadline, then the
/// delivery is given up, and the last attempt says so; nothing is sent after that.
#[tokio::test]
async fn a_receiver_that_never_accepts_is_given_up_and_it_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        data_dir: dir.path().join("data"),
        webhooks_allow_private: true,
        webhook_delivery: DeliveryConfig {
            backoff: Backoff {
                first: Duration::from_millis(20),
                cap: Duration::from_millis(50),
                give_up_after: Duration::from_millis(400),
                jitter: 0.2,
            },
            ..quick_delivery()
        },
        ..DevConfig::default()
    };
    let t = TestApp::from_app(DevApp::build(&config, Arc::new(SystemClock)).unwrap(), dir);
    let receiver = Receiver::start(usize::MAX).await;
    let created = create(
        &t,
        json!({"url": receiver.url(), "events": ["job.canceled"]}),
    )
    .await;
    receiver.set_secret(created.body["secret"].as_str().unwrap());
    let endpoint = created.body["id"].as_str().unwrap().to_string();
    let job = t.submit(&common::invert()).await;
    let id = job.body["id"].as_str().unwrap();
    t.post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
        .await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let deliverer = tokio::spawn(t.app.deliverer().unwrap().run(stopped));
    let deadline = Instant::now() + Duration::from_secs(20);
    let attempts = loop {
        let reply = t
            .get(&format!("{HOOKS}/{endpoint}/deliveries?limit=100"))
            .await;
        let attempts = reply.body["attempts"].as_array().unwrap().clone();
        if attempts.first().is_some_and(|a| a["state"] == "gave_up") {
            break attempts;
        }
        assert!(Instant::now() < deadline, "not given up: {attempts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tries = receiver.seen.lock().unwrap().tries.values().sum::<usize>();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    deliverer.await.unwrap();
    assert!(
        attempts.len() >= 3,
        "retried before giving up: {attempts:?}"
    );
    assert_eq!(attempts.len(), tries, "each try is recorded");
    assert!(attempts[0]["next_attempt_at"].is_null());
    assert!(attempts[1..].iter().all(|a| a["state"] == "pending"));
    assert_eq!(
        receiver.seen.lock().unwrap().tries.values().sum::<usize>(),
        tries,
        "nothing is sent after giving up"
    );
    assert!(receiver.accepted().is_empty());
}

/// The default `dev` refuses a webhook to itself even when the name only resolves
/// inward (`localhost` is refused as a name; a loopback literal as an address).
#[tokio::test]
async fn without_the_flag_a_local_receiver_cannot_be_registered() {
    let t = app(false);
    let receiver = Receiver::start(0).await;
    let reply = create(&t, json!({"url": receiver.url()})).await;
    assert_envelope(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_webhook_url",
    );
}

// ------------------------------------------------------------------ dev, killed

const BIN: &str = env!("CARGO_BIN_EXE_serverless-comfyui");

struct Dev {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
    starts: usize,
}

impl Dev {
    async fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("dev-{}.log", self.starts))).unwrap();
        let child = Command::new(BIN)
            .args(["dev", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--tick-seconds",
                "1",
                "--runner-idle-seconds",
                "2",
                "--simulator-step-ms",
                "5",
                "--webhooks-allow-private",
                "--webhook-retry-first-ms",
                "100",
                "--webhook-lease-ms",
                "2000",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dev starts");
        self.child = Some(child);
        let health = format!("{}/api/v2/health", self.url());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "dev did not answer health");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to the process this test started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_killed_between_the_job_end_and_its_delivery_delivers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dev = Dev {
        child: None,
        port,
        dir: dir.path().to_path_buf(),
        starts: 0,
    };
    dev.start().await;
    let receiver = Receiver::start(0).await;
    receiver.seen.lock().unwrap().down = true;
    let http = reqwest::Client::new();
    // Registered with the CLI, as a user would.
    let created = cli(
        &dev,
        &[
            "create",
            &receiver.url(),
            "--event",
            "job.succeeded",
            "--event",
            "job.running",
        ],
    );
    receiver.set_secret(created["secret"].as_str().expect("a secret"));
    let job: Value = http
        .post(format!("{}/api/v2/jobs", dev.url()))
        .json(&json!({"workflow": workflow("txt2img-sd15.json")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().expect("a job id").to_string();

    // The job ends; its deliveries are tried and fail while the receiver is down.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Value = http
            .get(format!("{}/api/v2/jobs/{job_id}", dev.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tried = receiver.seen.lock().unwrap().tries.len();
        if now["status"] == "succeeded" && tried == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job {now} and {tried} deliveries tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.kill();
    assert!(receiver.accepted().is_empty());

    receiver.seen.lock().unwrap().down = false;
    dev.start().await;
    receiver.wait_accepted(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "exactly one accepted delivery per event");
    let mut types: Vec<_> = accepted
        .iter()
        .map(|(_, body)| body["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["job.running", "job.succeeded"]);
    for (_, body) in &accepted {
        assert_eq!(body["data"]["id"], job_id.as_str());
        // `job.running` shows the job as it was when the event was fanned out: still
        // running, or already done when the job was quicker than the deliverer.
        let allowed: &[&str] = match body["type"].as_str().unwrap() {
            "job.running" => &["running", "succeeded"],
            _ => &["succeeded"],
        };
        assert!(
            allowed.contains(&body["data"]["status"].as_str().unwrap()),
            "{body}"
        );
    }
    assert_eq!(receiver.seen.lock().unwrap().bad_signatures, 0);

    // The CLI shows the endpoint (no secret) and its attempts, then deletes it.
    let endpoint = created["id"].as_str().unwrap();
    let listed = cli(&dev, &["list"]);
    assert_eq!(listed["endpoints"][0]["id"], endpoint);
    assert!(listed["endpoints"][0].get("secret").is_none());
    let attempts = cli(&dev, &["deliveries", endpoint, "--limit", "100"]);
    let attempts = attempts["attempts"].as_array().unwrap();
    let delivered: Vec<_> = attempts
        .iter()
        .filter(|a| a["state"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "{attempts:?}");
    assert!(delivered.iter().all(|a| a["status_code"] == 204));
    assert!(
        attempts
            .iter()
            .any(|a| a["status_code"] == 500 && a["next_attempt_at"].is_string()),
        "the failed tries before the kill are shown with their next attempt"
    );
    assert_eq!(cli(&dev, &["delete", endpoint])["deleted"], endpoint);
    assert_eq!(cli(&dev, &["list"])["endpoints"], json!([]));
}

/// `serverless-comfyui webhooks <args> --json --url <dev>`, which must succeed.
fn cli(dev: &Dev, args: &[&str]) -> Value {
    let output = Command::new(BIN)
        .arg("webhooks")
        .args(args)
        .args(["--json", "--url", &dev.url()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "webhooks {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
