//! The simulator as a child process, as the runner's chaos tests use it: faults switched
//! by CLI flag and over HTTP (`/__sim/faults`), and a crash that really exits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Kills the child if a test fails before it exits.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfyui-sim"))
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (Guard(child), url)
}

fn wait_exit(guard: &mut Guard) -> std::process::ExitStatus {
    let child = &mut guard.0;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the simulator did not exit");
}

fn prompt() -> Value {
    json!({"prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}
    }})
}

#[tokio::test]
async fn crash_flag_really_exits() {
    let (mut child, url) = spawn(&["--fault-crash"]);
    let c = reqwest::Client::new();
    let stats: Value = c
        .get(format!("{url}/system_stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["simulator"]["name"], "comfyui-sim");
    // Accepted, then the process dies at the first node.
    let r = c.post(format!("{url}/prompt")).json(&prompt()).send().await;
    assert!(r.is_err() || r.unwrap().status() == 200);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(comfyui_sim::CRASH_EXIT_CODE));
}

#[tokio::test]
async fn faults_over_http() {
    let (mut child, url) = spawn(&[]);
    let c = reqwest::Client::new();
    let f: Value = c
        .post(format!("{url}/__sim/faults"))
        .json(&json!({"http_500": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f["http_500"], true);
    assert_eq!(
        c.get(format!("{url}/queue")).send().await.unwrap().status(),
        500
    );
    let bad = c
        .post(format!("{url}/__sim/faults"))
        .json(&json!({"nope": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    c.post(format!("{url}/__sim/faults"))
        .json(&json!({"http_500": false, "crash": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(format!("{url}/api/queue"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = c.post(format!("{url}/prompt")).json(&prompt()).send().await;
    assert_eq!(
        wait_exit(&mut child).code(),
        Some(comfyui_sim::CRASH_EXIT_CODE)
    );
}
