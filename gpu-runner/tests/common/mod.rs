//! Shared helpers for the runner tests: a local data dir with the job service over it,
//! an in-process simulator launcher that can crash and be restarted, and waits.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use comfyui_sim::{SimConfig, SimHandle, Simulator};
use gpu_runner::{
    EngineLauncher, EngineProcess, EngineSpec, Launched, RunReport, Runner, RunnerConfig,
    RunnerError,
};
use jobs::model::{Asset, BlobRecord, Job, JobId, JobStatus, SCHEMA_VERSION, new_asset_id};
use jobs::ports::SystemClock;
use jobs::service::{JobService, JobsConfig, Ports};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[cfg(target_os = "linux")]
pub mod chaos;

pub const TENANT: &str = "t1";

pub fn workflow(name: &str) -> Value {
    let path = format!(
        "{}/../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// A KSampler workflow (the simulator sleeps `step_ms` per step) with this many steps
/// and seed, so each job misses the cache.
pub fn sampler(steps: u32, seed: u64) -> Value {
    let mut wf = workflow("txt2img-sd15.json");
    wf["3"]["inputs"]["steps"] = json!(steps);
    wf["3"]["inputs"]["seed"] = json!(seed);
    wf["5"]["inputs"]["width"] = json!(64);
    wf["5"]["inputs"]["height"] = json!(64);
    wf
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub jobs: Arc<JobService>,
}

impl Env {
    /// A fresh local data dir (SQLite, files).
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ports = local::DataDir::open(dir.path())
            .unwrap()
            .ports(Arc::new(SystemClock), "http://127.0.0.1:8787")
            .unwrap();
        Env::over(dir, ports)
    }

    /// The job service over `ports` (e.g. the AWS adapters on moto); `dir` is the
    /// test's scratch directory (logs, caches).
    pub fn over(dir: tempfile::TempDir, ports: Ports) -> Env {
        let jobs = Arc::new(JobService::new(
            ports.clone(),
            JobsConfig {
                // These suites load the runner, not the API's quotas.
                default_quota: jobs::quota::TenantQuota::UNLIMITED,
                ..JobsConfig::default()
            },
            b"0123456789abcdef0123456789abcdef".to_vec(),
        ));
        Env { dir, ports, jobs }
    }

    pub async fn submit(&self, workflow: &Value) -> JobId {
        let body = serde_json::to_vec(&json!({ "workflow": workflow })).unwrap();
        let submitted = self
            .jobs
            .submit(TENANT, &body, None)
            .await
            .unwrap_or_else(|e| panic!("submit: {e:?}"));
        JobId::parse(&submitted.job.id).unwrap()
    }

    pub async fn job(&self, id: &JobId) -> Job {
        self.ports.store.get_job(id).await.unwrap().unwrap()
    }

    pub async fn cancel(&self, id: &JobId) {
        self.jobs.cancel(TENANT, id.as_str()).await.unwrap();
    }

    /// Waits until `check` holds for the job (bounded: generous, never a speed test).
    pub async fn wait_for(&self, id: &JobId, what: &str, check: impl Fn(&Job) -> bool) -> Job {
        for _ in 0..3000 {
            let job = self.job(id).await;
            if check(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never became {what}: {:?}", self.job(id).await);
    }

    pub async fn wait_terminal(&self, id: &JobId) -> Job {
        self.wait_for(id, "terminal", |j| j.status.is_terminal())
            .await
    }

    pub async fn blob(&self, key: &str) -> Bytes {
        self.ports
            .blobs
            .get(key)
            .await
            .unwrap()
            .expect("blob exists")
    }

    /// An input asset of the tenant, as `POST /api/v2/assets` would mint it.
    pub async fn asset(&self, bytes: Vec<u8>, file_path: &str) -> String {
        let hash = format!("blake3:{}", blake3::hash(&bytes).to_hex());
        let blob_key = format!("cas/{TENANT}/{}", &hash[7..]);
        let size = bytes.len() as u64;
        self.ports
            .blobs
            .put(&blob_key, Bytes::from(bytes), "image/png")
            .await
            .unwrap();
        let now = chrono::Utc::now();
        self.ports
            .store
            .put_blob_record_if_absent(&BlobRecord {
                v: SCHEMA_VERSION,
                tenant: TENANT.into(),
                hash: hash.clone(),
                size_bytes: size,
                blob_key: blob_key.clone(),
                created_at: now,
            })
            .await
            .unwrap();
        let asset = Asset {
            v: SCHEMA_VERSION,
            id: new_asset_id(),
            tenant: TENANT.into(),
            hash,
            size_bytes: size,
            content_type: "image/png".into(),
            file_path: Some(file_path.into()),
            tags: vec![],
            created_at: now,
            blob_key,
            job_id: None,
        };
        self.ports.store.put_asset(&asset).await.unwrap();
        asset.id
    }
}

pub fn test_config() -> RunnerConfig {
    RunnerConfig {
        idle_timeout: None,
        shutdown_grace: Duration::from_millis(300),
        ready_timeout: Duration::from_secs(20),
        poll_wait: Duration::from_millis(200),
        ..RunnerConfig::default()
    }
    .with_lease(Duration::from_millis(1500))
}

pub struct RunningRunner {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<RunReport, RunnerError>>,
    pub worker_id: String,
}

impl RunningRunner {
    pub async fn stop(self) -> RunReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("runner stops")
            .expect("runner task")
            .expect("runner ok")
    }
}

pub fn start_runner(env: &Env, engine: EngineSpec, config: RunnerConfig) -> RunningRunner {
    init_logs();
    let shutdown = CancellationToken::new();
    let worker_id = config.worker_id.clone();
    let runner = Runner::new(config, env.ports.clone(), engine);
    let task = tokio::spawn(runner.run(shutdown.clone()));
    RunningRunner {
        shutdown,
        task,
        worker_id,
    }
}

pub async fn sim(step_ms: u64) -> SimHandle {
    Simulator::start(SimConfig {
        step_ms,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Starts in-process simulators for the runner and keeps the latest, so a test can
/// crash it; the runner sees it stop and launches a fresh one.
pub struct SimLauncher {
    pub config: SimConfig,
    pub current: Mutex<Option<Arc<SimHandle>>>,
    pub launches: Mutex<u32>,
}

impl SimLauncher {
    pub fn new(step_ms: u64) -> Arc<SimLauncher> {
        Arc::new(SimLauncher {
            config: SimConfig {
                step_ms,
                ..SimConfig::default()
            },
            current: Mutex::new(None),
            launches: Mutex::new(0),
        })
    }

    pub fn sim(&self) -> Arc<SimHandle> {
        self.current.lock().unwrap().clone().expect("launched")
    }

    pub fn launches(&self) -> u32 {
        *self.launches.lock().unwrap()
    }
}

struct SimProcess(Arc<SimHandle>);

#[async_trait]
impl EngineProcess for SimProcess {
    async fn wait(&mut self) -> String {
        while !self.0.is_stopped() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        "simulator stopped".into()
    }

    async fn kill(&mut self) {
        self.0.crash();
    }
}

#[async_trait]
impl EngineLauncher for SimLauncher {
    async fn launch(&self) -> Result<Launched, RunnerError> {
        let sim = Arc::new(
            Simulator::start(self.config.clone())
                .await
                .map_err(|e| RunnerError::Engine(e.to_string()))?,
        );
        *self.current.lock().unwrap() = Some(sim.clone());
        *self.launches.lock().unwrap() += 1;
        Ok(Launched {
            url: sim.base_url(),
            process: Box::new(SimProcess(sim)),
        })
    }
}

/// Decodes a PNG to (width, height, RGB of the first pixel).
pub fn png_first_pixel(bytes: &[u8]) -> (u32, u32, [u8; 3]) {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height, [buf[0], buf[1], buf[2]])
}

pub fn red_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        let data: Vec<u8> = (0..w * h).flat_map(|_| [255u8, 0, 0]).collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

pub fn is_status(status: JobStatus) -> impl Fn(&Job) -> bool {
    move |j| j.status == status
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
