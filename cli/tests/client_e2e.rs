//! The command-line client (`run`, `jobs`, `assets`) end to end: the real binary
//! against a real `serverless-comfyui dev`, each test with its own server on a free
//! loopback port and its own data directory.
//!
//! Jobs run on `dev`'s GPU runner over the built-in ComfyUI simulator.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_serverless-comfyui");

fn workflow_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/workflows")
        .join(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What one run of the command came to.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// A usage or connection error: exit 3, one line on stderr, no backtrace.
    fn assert_error_line(&self, contains: &str) {
        assert_eq!(self.code, Some(3), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        assert!(
            lines[0].contains(contains),
            "wanted {contains:?}: {self:#?}"
        );
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(bad), "{self:#?}");
        }
    }
}

/// Runs the command with `COMFY_BASE_URL=url`, in `cwd`.
fn cli(url: &str, cwd: &Path, args: &[&str]) -> Out {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("COMFY_BASE_URL", url)
        .env_remove("COMFY_API_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    Out {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `dev` server of our own.
struct Dev {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// A `dev` with these flags besides its address and data directory.
    fn start_with(flags: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("dev-{attempt}.log"))).unwrap();
            let mut child = Command::new(BIN)
                .args([
                    "dev",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(dir.path().join("data"))
                .args(flags)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("dev starts");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken after all: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dev {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let logs: Vec<String> = (0..3)
            .filter_map(|a| std::fs::read_to_string(dir.path().join(format!("dev-{a}.log"))).ok())
            .collect();
        panic!("dev did not start: {logs:#?}");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cli(&self, args: &[&str]) -> Out {
        cli(&self.url, self.path(), args)
    }

    fn cli_with_key(&self, key: &str, args: &[&str]) -> Out {
        let output = Command::new(BIN)
            .args(args)
            .current_dir(self.path())
            .env("COMFY_BASE_URL", &self.url)
            .env("COMFY_API_KEY", key)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// A raw v2 request, for checking what the client did.
    fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = reqwest::get(&url).await.unwrap();
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.json().await.unwrap()
        })
    }

    /// The status of a raw GET.
    fn get_status(&self, path: &str) -> u16 {
        let url = format!("{}{path}", self.url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { reqwest::get(&url).await.unwrap().status().as_u16() })
    }

    fn get_bytes(&self, path: &str) -> Vec<u8> {
        let url = format!("{}{path}", self.url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = reqwest::get(&url).await.unwrap();
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.bytes().await.unwrap().to_vec()
        })
    }

    /// Polls `jobs get` until `done(status)` or the deadline.
    fn wait_for(&self, id: &str, seconds: u64, done: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let job = self.cli(&["jobs", "get", id, "--json"]).json();
            let status = job["status"].as_str().unwrap().to_string();
            if done(&status) || Instant::now() > deadline {
                return job;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SIGTERM first, so that dev stops its runners; then make sure.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running client whose stderr is collected as it comes.
struct Background {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout_reader: std::thread::JoinHandle<String>,
}

impl Background {
    fn start(dev: &Dev, args: &[&str]) -> Background {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dev.path())
            .env("COMFY_BASE_URL", &dev.url)
            .env_remove("COMFY_API_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut out, &mut text).unwrap();
            text
        });
        Background {
            child,
            stderr,
            stdout_reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text`.
    fn wait_for_stderr(&self, text: &str, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} on stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn interrupt(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
    }

    fn finish(mut self, seconds: u64) -> Out {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the client did not finish: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100)); // the stderr thread's last lines
        let stderr = self.stderr();
        let stdout = self.stdout_reader.join().unwrap();
        Out {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}

/// A small RGB PNG.
fn write_png(path: &Path, width: u32, height: u32, rgb: [u8; 3]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    let data: Vec<u8> = (0..width * height).flat_map(|_| rgb).collect();
    writer.write_image_data(&data).unwrap();
}

/// Width, height and the first pixel (RGB) of a PNG.
fn read_png(path: &Path) -> (u32, u32, [u8; 3]) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let _ = channels;
    (info.width, info.height, [buf[0], buf[1], buf[2]])
}

// ---- usage and connection errors: no server needed -------------------------------

#[test]
fn usage_errors_are_one_line_and_exit_3_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: a local error must come before any request is tried.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let cwd = dir.path();
    let ui = workflow_path("ui-format.json");
    let txt2img = workflow_path("txt2img-sd15.json");
    let blur = workflow_path("load-blur.json");
    let run = |args: &[&str]| cli(&nowhere, cwd, args);

    run(&["run", ui.to_str().unwrap()]).assert_error_line("Workflow → Export (API)");
    run(&["run", ui.to_str().unwrap()]).assert_error_line("UI-format");
    run(&[
        "run",
        txt2img.to_str().unwrap(),
        "--set",
        "99.text=a red fox",
    ])
    .assert_error_line("the workflow has no node \"99\" (its nodes: 3, 4, 5, 6, 7, 8, 9)");
    run(&["run", txt2img.to_str().unwrap(), "--set", "6.txt=a red fox"])
        .assert_error_line("node 6 (CLIPTextEncode) has no input \"txt\" (its inputs: text, clip)");
    run(&["run", txt2img.to_str().unwrap(), "--set", "6text"])
        .assert_error_line("NODE.INPUT=VALUE");
    run(&[
        "run",
        txt2img.to_str().unwrap(),
        "--set",
        "3.seed=forty-two",
    ])
    .assert_error_line("a number");
    run(&["run", "missing.json"]).assert_error_line("cannot read missing.json");
    run(&[
        "run",
        blur.to_str().unwrap(),
        "--input",
        "10.image=no-such-photo.png",
    ])
    .assert_error_line("cannot read no-such-photo.png");
    run(&["run", blur.to_str().unwrap(), "--input", "99.image=x.png"])
        .assert_error_line("no node \"99\"");
    run(&["run", blur.to_str().unwrap(), "--label", "nolabel"]).assert_error_line("KEY=VALUE");
    run(&["jobs", "list", "--label", "=x"]).assert_error_line("KEY=VALUE");
    // A workflow that is not even JSON, and one that is an invalid graph.
    std::fs::write(cwd.join("broken.json"), "{\"1\": ").unwrap();
    run(&["run", "broken.json"])
        .assert_error_line("broken.json: the request body is not valid JSON");
    std::fs::write(
        cwd.join("dangling.json"),
        r#"{"1": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}"#,
    )
    .unwrap();
    run(&["run", "dangling.json"]).assert_error_line(
        "dangling.json: invalid_workflow: invalid workflow: node 1 input `images` links to node 7",
    );

    // clap's own usage errors exit 3 for the client commands too.
    let out = run(&["run", "--no-such-flag", "x.json"]);
    assert_eq!(out.code, Some(3), "{out:#?}");
    let out = run(&["jobs", "get"]);
    assert_eq!(out.code, Some(3), "{out:#?}");
    // ... while `dev` keeps clap's 2.
    let out = run(&["dev", "--no-such-flag"]);
    assert_eq!(out.code, Some(2), "{out:#?}");
}

#[test]
fn an_unreachable_or_bad_url_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let invert = workflow_path("invert.json");
    let started = Instant::now();
    let out = cli(&nowhere, dir.path(), &["run", invert.to_str().unwrap()]);
    out.assert_error_line("cannot connect to http://127.0.0.1:");
    out.assert_error_line("Is the server running? Start one with `serverless-comfyui dev`");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no long retry loop"
    );
    cli(&nowhere, dir.path(), &["jobs", "list"]).assert_error_line("cannot connect");

    for bad in ["127.0.0.1:8787", "ftp://example.com", "http://"] {
        cli(bad, dir.path(), &["jobs", "list"]).assert_error_line("bad server URL");
    }
    // --url wins over the variable.
    cli(bad_env(), dir.path(), &["jobs", "list", "--url", &nowhere])
        .assert_error_line("cannot connect");

    // --json: the error is JSON on stdout as well.
    let out = cli(&nowhere, dir.path(), &["jobs", "list", "--json"]);
    assert_eq!(out.code, Some(3));
    assert_eq!(out.json()["error"]["code"], "connect");
}

fn bad_env() -> &'static str {
    "not a url"
}

// ---- against dev, jobs queued -------------------------------------------------------

#[test]
fn a_bad_key_is_401_with_what_to_do_and_the_key_never_shows() {
    let dev = Dev::start();
    let created = Command::new(BIN)
        .args(["keys", "create", "--tenant", "t", "--data-dir"])
        .arg(dev.data_dir())
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(!key.is_empty());
    // The server caches "keys exist" for up to a second.
    std::thread::sleep(Duration::from_millis(1200));

    let out = dev.cli(&["jobs", "list"]);
    out.assert_error_line("unauthorized: missing credentials");
    out.assert_error_line("set COMFY_API_KEY or pass --api-key");

    let wrong = "sk-this-is-not-the-key-0123456789";
    let out = dev.cli_with_key(wrong, &["jobs", "list"]);
    out.assert_error_line("unauthorized: invalid API key");
    out.assert_error_line("refused the API key");
    assert!(!out.stderr.contains(wrong) && !out.stdout.contains(wrong));
    let out = dev.cli(&["jobs", "list", "--api-key", wrong]);
    out.assert_error_line("invalid API key");
    assert!(!out.stderr.contains(wrong));

    let invert = workflow_path("invert.json");
    let out = dev.cli_with_key(wrong, &["run", invert.to_str().unwrap(), "--no-wait"]);
    out.assert_error_line("invalid API key");

    let out = dev.cli_with_key(
        &key,
        &["run", invert.to_str().unwrap(), "--no-wait", "--json"],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    let id = out.json()["job"]["id"].as_str().unwrap().to_string();
    let out = dev.cli_with_key(&key, &["jobs", "list", "--json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.json()["jobs"][0]["id"], id.as_str());
    assert!(!out.stdout.contains(&key) && !out.stderr.contains(&key));
    // The help text never shows the variable's value.
    let help = dev.cli_with_key(&key, &["run", "--help"]);
    assert!(help.stdout.contains("COMFY_API_KEY"), "{help:#?}");
    assert!(!help.stdout.contains(&key), "{help:#?}");
}

#[test]
fn no_wait_then_jobs_get_list_and_cancel() {
    let dev = Dev::start();
    let txt2img = workflow_path("txt2img-sd15.json");
    let out = dev.cli(&[
        "run",
        txt2img.to_str().unwrap(),
        "--set",
        "6.text=a red fox",
        "--set",
        "3.seed=42",
        "--set",
        // Long enough (50 s at the simulator's 50 ms a step) that the cancel below is
        // noticed, within one heartbeat (10 s), before the job could finish.
        "3.steps=1000",
        "--label",
        "project=fox",
        "--label",
        "run=1",
        "--no-wait",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let job = &out.json()["job"];
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"), "{id}");
    assert_eq!(job["metadata"], json!({"project": "fox", "run": "1"}));
    assert!(out.stderr.is_empty(), "--json --no-wait is quiet: {out:#?}");

    // The server ran what --set said.
    let submitted = dev.get(&format!("/api/v2/jobs/{id}/workflow"));
    assert_eq!(submitted["workflow"]["6"]["inputs"]["text"], "a red fox");
    assert_eq!(submitted["workflow"]["3"]["inputs"]["seed"], 42);
    assert_eq!(submitted["workflow"]["3"]["inputs"]["steps"], 1000);

    // jobs get, as JSON and as text.
    let got = dev.cli(&["jobs", "get", &id, "--json"]);
    assert_eq!(got.code, Some(0), "{got:#?}");
    assert_eq!(got.json()["id"], id.as_str());
    let text = dev.cli(&["jobs", "get", &id]);
    assert_eq!(text.code, Some(0), "{text:#?}");
    assert!(text.stdout.contains(&format!("job      {id}")), "{text:#?}");
    assert!(
        text.stdout.contains("labels   project=fox, run=1"),
        "{text:#?}"
    );

    // The human --no-wait output says how to follow.
    let invert = workflow_path("invert.json");
    let other = dev.cli(&[
        "run",
        invert.to_str().unwrap(),
        "--no-wait",
        "--label",
        "project=owl",
    ]);
    assert_eq!(other.code, Some(0), "{other:#?}");
    assert!(
        other
            .stdout
            .contains("follow it with: serverless-comfyui jobs get job_"),
        "{other:#?}"
    );

    // jobs list by label.
    let fox = dev
        .cli(&["jobs", "list", "--label", "project=fox", "--json"])
        .json();
    let ids: Vec<&str> = fox["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let all = dev.cli(&["jobs", "list", "--limit", "1", "--json"]).json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    let cursor = all["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let next = dev
        .cli(&[
            "jobs", "list", "--limit", "1", "--cursor", &cursor, "--json",
        ])
        .json();
    assert_eq!(
        next["jobs"][0]["id"],
        id.as_str(),
        "the older job on page two"
    );
    let listed = dev.cli(&["jobs", "list", "--label", "project=fox"]);
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("project=fox"),
        "{listed:#?}"
    );
    let none = dev.cli(&["jobs", "list", "--label", "project=nobody"]);
    assert_eq!(none.stdout.trim(), "no jobs");

    // Cancel: at once while queued, at the next node boundary while running.
    let canceled = dev.cli(&["jobs", "cancel", &id, "--json"]);
    assert_eq!(canceled.code, Some(0), "{canceled:#?}");
    let status = canceled.json()["status"].as_str().unwrap().to_string();
    assert!(status == "canceled" || status == "canceling", "{status}");
    let job = dev.wait_for(&id, 60, |s| s == "canceled");
    assert_eq!(job["status"], "canceled");
    let again = dev.cli(&["jobs", "cancel", &id]);
    assert_eq!(again.code, Some(0));
    assert!(again.stdout.contains("canceled"), "{again:#?}");

    // An unknown job is the server's 404, on one line.
    dev.cli(&["jobs", "get", "job_01JZTGXW9Q2M4R8V0B1N3P5D7F"])
        .assert_error_line("not_found: ");
    // A job with nothing to download says so.
    let download = dev.cli(&["jobs", "download", &id, "--out", "dl"]);
    assert_eq!(download.code, Some(0), "{download:#?}");
    assert!(download.stdout.contains("no outputs"), "{download:#?}");
}

#[test]
fn dev_cancels_a_running_job_within_seconds() {
    let dev = Dev::start();
    let txt2img = workflow_path("txt2img-sd15.json");
    // 1000 steps at the simulator's 50 ms: 50 s, and the runner's heartbeat is 10 s.
    let out = dev.cli(&[
        "run",
        txt2img.to_str().unwrap(),
        "--set",
        "3.steps=1000",
        "--no-wait",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let id = out.json()["job"]["id"].as_str().unwrap().to_string();
    let running = dev.wait_for(&id, 60, |s| s == "running");
    assert_eq!(running["status"], "running", "{running:#}");
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let canceled = dev.cli(&["jobs", "cancel", &id, "--json"]);
    assert_eq!(canceled.code, Some(0), "{canceled:#?}");
    assert_eq!(canceled.json()["status"], "canceling");
    let mut job = dev.get(&format!("/api/v2/jobs/{id}"));
    while job["status"] != "canceled" && asked.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
        job = dev.get(&format!("/api/v2/jobs/{id}"));
    }
    // The runner-level bound is 2 s (gpu-runner/tests/cancel.rs); here the CLI's own
    // start-up counts too.
    assert_eq!(
        job["status"],
        "canceled",
        "canceled within 3 s, not at a 10 s heartbeat: {:?} {job:#}",
        asked.elapsed()
    );
    assert_eq!(job["outputs"], json!([]));
}

#[test]
fn inputs_are_uploaded_once_and_referenced_as_assets() {
    let dev = Dev::start();
    let photo = dev.path().join("photo.png");
    write_png(&photo, 40, 30, [200, 10, 10]);
    let bytes = std::fs::read(&photo).unwrap();
    let hash = format!("blake3:{}", blake3::hash(&bytes).to_hex());

    // assets upload: new bytes, then the same bytes again (the dedup probe hits).
    let first = dev.cli(&["assets", "upload", "photo.png", "--json"]);
    assert_eq!(first.code, Some(0), "{first:#?}");
    let first = first.json();
    assert_eq!(first["hash"], hash.as_str());
    assert_eq!(first["deduplicated"], false);
    assert_eq!(first["content_type"], "image/png");
    let second = dev.cli(&["assets", "upload", "photo.png"]);
    assert_eq!(second.code, Some(0), "{second:#?}");
    assert!(second.stderr.contains("no bytes sent"), "{second:#?}");
    assert!(second.stdout.contains(&hash), "{second:#?}");
    assert!(second.stderr.contains("core/ASSET"), "{second:#?}");
    dev.cli(&["assets", "upload", "nope.png"])
        .assert_error_line("cannot read nope.png");

    // run --input: the file becomes a core/ASSET reference with those exact bytes.
    let blur = workflow_path("load-blur.json");
    let out = dev.cli(&[
        "run",
        blur.to_str().unwrap(),
        "--input",
        "10.image=photo.png",
        "--set",
        "12.width=64",
        "--no-wait",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let id = out.json()["job"]["id"].as_str().unwrap().to_string();
    let workflow = dev.get(&format!("/api/v2/jobs/{id}/workflow"))["workflow"].clone();
    let reference = &workflow["10"]["inputs"]["image"];
    assert_eq!(reference["__type"], "core/ASSET", "{workflow}");
    let asset_id = reference["info"]["id"].as_str().unwrap();
    assert_eq!(workflow["12"]["inputs"]["width"], 64);
    let content = dev.get_bytes(&format!("/api/v2/assets/{asset_id}/content"));
    assert_eq!(content, bytes);
    let asset = dev.get(&format!("/api/v2/assets/{asset_id}"));
    assert_eq!(asset["file_path"], "photo.png");
    // Human output says what happened to the input.
    let text = dev.cli(&[
        "run",
        blur.to_str().unwrap(),
        "--input",
        "10.image=photo.png",
        "--no-wait",
    ]);
    assert_eq!(text.code, Some(0), "{text:#?}");
    assert!(
        text.stderr.contains("input 10.image = photo.png → asset_")
            && text.stderr.contains("no bytes sent"),
        "{text:#?}"
    );
}

#[test]
fn server_side_refusals_show_the_servers_code_and_message() {
    let dev = Dev::start();
    // Passes the local checks; the server finds the asset missing.
    std::fs::write(
        dev.path().join("missing-asset.json"),
        r#"{"10": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "asset_01JZV8Q3M7K2W9X0Y1Z2A3B4C5"}}}},
            "13": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "x"}}}"#,
    )
    .unwrap();
    let out = dev.cli(&["run", "missing-asset.json"]);
    out.assert_error_line("missing_asset: ");
    let out = dev.cli(&["run", "missing-asset.json", "--json"]);
    assert_eq!(out.code, Some(3));
    assert_eq!(out.json()["error"]["code"], "missing_asset");
    assert_eq!(out.json()["error"]["status"], 422);
    // Too many labels: the server's metadata_invalid.
    let invert = workflow_path("invert.json");
    let mut args: Vec<String> = vec![
        "run".into(),
        invert.to_str().unwrap().into(),
        "--no-wait".into(),
    ];
    for i in 0..17 {
        args.push("--label".into());
        args.push(format!("k{i}=v"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dev.cli(&args).assert_error_line("metadata_invalid: ");
    // The same idempotency key twice returns the same job, never a second one.
    let once = dev.cli(&[
        "run",
        invert.to_str().unwrap(),
        "--no-wait",
        "--json",
        "--idempotency-key",
        "k-1",
    ]);
    let twice = dev.cli(&[
        "run",
        invert.to_str().unwrap(),
        "--no-wait",
        "--json",
        "--idempotency-key",
        "k-1",
    ]);
    assert_eq!(once.json()["job"]["id"], twice.json()["job"]["id"]);
    let other = dev.cli(&[
        "run",
        invert.to_str().unwrap(),
        "--no-wait",
        "--set",
        "1.width=8",
        "--idempotency-key",
        "k-1",
    ]);
    other.assert_error_line("idempotency_key_reuse: ");
}

#[test]
fn ctrl_c_cancels_the_job_and_says_so() {
    let dev = Dev::start();
    let txt2img = workflow_path("txt2img-sd15.json");
    // Long enough to still be queued or running when Ctrl-C comes.
    let client = Background::start(
        &dev,
        &[
            "run",
            txt2img.to_str().unwrap(),
            "--set",
            "3.steps=500",
            "--json",
        ],
    );
    client.wait_for_stderr("job_", 30);
    std::thread::sleep(Duration::from_millis(300));
    client.interrupt();
    let out = client.finish(90);
    assert_eq!(out.code, Some(2), "canceled: {out:#?}");
    assert!(out.stderr.contains("Ctrl-C: canceling job_"), "{out:#?}");
    let result = out.json();
    assert_eq!(result["job"]["status"], "canceled");
    assert_eq!(result["downloads"], json!([]));
    let id = result["job"]["id"].as_str().unwrap();
    assert_eq!(
        dev.cli(&["jobs", "get", id, "--json"]).json()["status"],
        "canceled"
    );
}

// ---- jobs that run: the runner in dev, on the simulator ---------------------------

#[test]
fn run_with_set_and_input_downloads_checked_outputs() {
    let dev = Dev::start();
    let photo = dev.path().join("photo.png");
    write_png(&photo, 40, 30, [250, 250, 250]);
    let blur = workflow_path("load-blur.json");
    let out = dev.cli(&[
        "run",
        blur.to_str().unwrap(),
        "--input",
        "10.image=photo.png",
        "--set",
        "12.width=64",
        "--set",
        "12.height=48",
        "--out",
        "results",
        "--label",
        "test=blur",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("status   succeeded"), "{out:#?}");
    assert!(out.stdout.contains("timing   queued"), "{out:#?}");
    let saved: Vec<PathBuf> = std::fs::read_dir(dev.path().join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let name = saved[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("13-") && name.ends_with(".png"), "{name}");
    assert!(out.stdout.contains(&format!("results/{name}")), "{out:#?}");
    let (width, height, _) = read_png(&saved[0]);
    assert_eq!((width, height), (64, 48));

    // invert.json: red inverted is cyan, and --json describes the files.
    let invert = workflow_path("invert.json");
    let out = dev.cli(&["run", invert.to_str().unwrap(), "--out", "inv", "--json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let result = out.json();
    assert_eq!(result["job"]["status"], "succeeded");
    let downloads = result["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 1, "{result}");
    assert_eq!(downloads[0]["node_id"], "3");
    let path = dev.path().join(downloads[0]["path"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        downloads[0]["size_bytes"].as_u64().unwrap()
    );
    let (_, _, pixel) = read_png(&path);
    assert_eq!(pixel, [0, 255, 255], "cyan");

    // jobs download fetches the same outputs again.
    let id = result["job"]["id"].as_str().unwrap();
    let again = dev.cli(&["jobs", "download", id, "--out", "again", "--json"]);
    assert_eq!(again.code, Some(0), "{again:#?}");
    let again_path = dev
        .path()
        .join(again.json()["downloads"][0]["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&again_path).unwrap(),
        std::fs::read(&path).unwrap()
    );
}

#[test]
fn no_wait_then_jobs_get_reaches_succeeded() {
    let dev = Dev::start();
    let invert = workflow_path("invert.json");
    let out = dev.cli(&["run", invert.to_str().unwrap(), "--no-wait", "--json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let id = out.json()["job"]["id"].as_str().unwrap().to_string();
    let job = dev.wait_for(&id, 120, |s| s == "succeeded" || s == "failed");
    assert_eq!(job["status"], "succeeded", "{job}");
    let text = dev.cli(&["jobs", "get", &id]);
    assert!(text.stdout.contains("status   succeeded"), "{text:#?}");
    assert!(text.stdout.contains("output   node 3"), "{text:#?}");
}

#[test]
fn a_failed_job_exits_1_with_its_error_code_node_and_class() {
    let dev = Dev::start();
    // Valid as a graph (so the server takes it), refused by ComfyUI's own validation:
    // EmptyImage's width has a minimum of 1. The first job of a fresh `dev` goes
    // unchecked (no runner has published its node catalogue yet), so ComfyUI refuses it.
    let invert = workflow_path("invert.json");
    let out = dev.cli(&["run", invert.to_str().unwrap(), "--set", "1.width=0"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("status   failed"), "{out:#?}");
    let error_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("error    "))
        .unwrap_or_else(|| panic!("an error line: {out:#?}"));
    assert!(error_line.contains("(node 1, EmptyImage)"), "{error_line}");
    let job = &dev.cli(&["jobs", "list", "--json"]).json()["jobs"][0];
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["node_id"], "1");
    assert_eq!(job["error"]["class_type"], "EmptyImage");
    assert!(job["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));

    // The runner published its ComfyUI's catalogue when it started: the same graph is
    // now refused at submit (422, exit 3), with ComfyUI's node_errors, and no job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dev.get_status("/api/v2/x-serverless-comfyui/catalogue") != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no catalogue published"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let json_out = dev.cli(&[
        "run",
        invert.to_str().unwrap(),
        "--set",
        "1.width=0",
        "--json",
    ]);
    assert_eq!(json_out.code, Some(3), "{json_out:#?}");
    let error = &json_out.json()["error"];
    assert_eq!(error["code"], "invalid_workflow", "{error}");
    assert_eq!(
        error["details"]["node_errors"]["1"]["errors"][0]["type"],
        "value_smaller_than_min"
    );
    let jobs = dev.cli(&["jobs", "list", "--json"]).json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
}

#[test]
fn a_second_ctrl_c_leaves_the_job_running() {
    let dev = Dev::start();
    let txt2img = workflow_path("txt2img-sd15.json");
    let client = Background::start(
        &dev,
        &["run", txt2img.to_str().unwrap(), "--set", "3.steps=2000"],
    );
    // Wait until it runs (the KSampler reports steps), then Ctrl-C twice.
    client.wait_for_stderr("running", 120);
    client.interrupt();
    client.wait_for_stderr("Ctrl-C: canceling", 30);
    client.interrupt();
    let out = client.finish(30);
    assert_eq!(out.code, Some(130), "{out:#?}");
    assert!(
        out.stderr.contains("Ctrl-C again: stopped waiting"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("is left to the server"), "{out:#?}");
}

/// A GET with a `Range` header: (status, headers, body).
fn get_range(url: &str, range: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn video_and_audio_outputs_download_with_their_extension_and_seek_with_range() {
    let dev = Dev::start();
    for (name, node, kind, ct, ext) in [
        ("video-vhs.json", "3", "video", "video/mp4", ".mp4"),
        ("audio.json", "2", "audio", "audio/wav", ".wav"),
    ] {
        let wf = workflow_path(name);
        let out = dev.cli(&["run", wf.to_str().unwrap(), "--out", "media", "--json"]);
        assert_eq!(out.code, Some(0), "{out:#?}");
        let result = out.json();
        let job = &result["job"];
        assert_eq!(job["status"], "succeeded", "{result}");
        let outputs = job["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{result}");
        assert_eq!(outputs[0]["type"], kind);
        assert_eq!(outputs[0]["content_type"], ct);
        // No --gpu-price-per-hour: GPU time is measured, no cost is claimed.
        assert!(job["metrics"]["gpu_ms"].as_i64().unwrap() > 0, "{job}");
        assert!(job["metrics"]["cost_micro_usd"].is_null(), "{job}");
        let d = &result["downloads"][0];
        assert_eq!(d["node_id"], node);
        let path = dev.path().join(d["path"].as_str().unwrap());
        assert!(path.to_string_lossy().ends_with(ext), "{path:?}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, d["size_bytes"].as_u64().unwrap());

        // The signed URL serves the type and answers a Range request with 206 and
        // exactly those bytes, as a player seeking does.
        let url = outputs[0]["url"].as_str().unwrap();
        let (status, headers, body) = get_range(url, "bytes=4-11");
        assert_eq!(status, 206, "{headers:?}");
        assert_eq!(headers["content-type"], ct);
        assert_eq!(
            headers["content-range"].to_str().unwrap(),
            format!("bytes 4-11/{}", bytes.len())
        );
        assert_eq!(body, bytes[4..12]);
        // An open-ended range from the middle, and the tail.
        let mid = bytes.len() / 2;
        let (status, _, body) = get_range(url, &format!("bytes={mid}-"));
        assert_eq!((status, body.as_slice()), (206, &bytes[mid..]));
        let (status, _, body) = get_range(url, "bytes=-16");
        assert_eq!((status, body.as_slice()), (206, &bytes[bytes.len() - 16..]));
        // The asset's v2 content route too (what a URL past its expiry falls back to).
        let content = format!(
            "{}/api/v2/assets/{}/content",
            dev.url,
            outputs[0]["id"].as_str().unwrap()
        );
        let (status, headers, body) = get_range(&content, "bytes=4-11");
        assert_eq!(
            (status, body.as_slice()),
            (206, &bytes[4..12]),
            "{headers:?}"
        );
        assert_eq!(headers["content-type"], ct);
        if kind == "video" {
            assert_eq!(&bytes[4..8], b"ftyp");
        } else {
            assert_eq!(&bytes[..4], b"RIFF");
        }
    }
}

#[test]
fn jobs_get_shows_gpu_time_and_the_cost_at_the_configured_price() {
    // $3600 per GPU-hour is a dollar a second: the cost reads as the GPU seconds.
    let dev = Dev::start_with(&["--gpu-price-per-hour", "3600"]);
    let invert = workflow_path("invert.json");
    let out = dev.cli(&["run", invert.to_str().unwrap(), "--no-wait", "--json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let id = out.json()["job"]["id"].as_str().unwrap().to_string();
    let job = dev.wait_for(&id, 120, |s| s == "succeeded" || s == "failed");
    assert_eq!(job["status"], "succeeded", "{job}");
    let m = &job["metrics"];
    // Whole numbers: comfy-sdk reads every metric as an integer.
    let gpu_ms = m["gpu_ms"].as_i64().unwrap();
    assert!(gpu_ms > 0 && gpu_ms < 60_000, "{m}");
    assert_eq!(gpu_ms, m["execution_ms"].as_i64().unwrap(), "{m}");
    // A dollar a second: a millionth of a dollar per microsecond, 1000 per ms.
    assert_eq!(m["cost_micro_usd"].as_i64().unwrap(), gpu_ms * 1000);
    let text = dev.cli(&["jobs", "get", &id]);
    assert_eq!(text.code, Some(0), "{text:#?}");
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("cost     GPU ") && l.contains("est. $")),
        "{text:#?}"
    );
    // A bad price is refused before dev starts.
    let bad = cli(&dev.url, dev.path(), &["dev", "--gpu-price-per-hour=-1"]);
    assert_eq!(bad.code, Some(2), "{bad:#?}");
    assert!(bad.stderr.contains("not a price"), "{bad:#?}");
}
