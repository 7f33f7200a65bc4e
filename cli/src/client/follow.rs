//! Following a job to its end: live events first, polling when there are none, and
//! Ctrl-C.
//!
//! ## Events, then polling
//!
//! The job's `events` stream (SSE) is the fast path: the server sends a snapshot on
//! connect and every change after it. It is bounded (the server closes it after about
//! 20 s, as it must behind API Gateway), so the follower reads the job once and
//! reconnects, which also repairs anything a dropped connection missed. A server
//! without SSE (501, or no such route) is polled instead, once a second; so is a server
//! that refuses another stream for now (429), until it has room again. The job read
//! with `GET` is always the authority: a terminal `status` event ends the stream, and
//! the job is read once more for its outputs and error.
//!
//! While the job is queued, the display says so with the job's own `progress.message`
//! ("waiting for a worker", "waiting for GPU capacity: VcpuLimitExceeded"), and with
//! `capacity.message` from `/api/v2/health` when the job's message lacks it.
//!
//! ## Ctrl-C
//!
//! The first Ctrl-C asks the server to cancel the job and keeps following it: a queued
//! job is canceled at once; a running one stops at the next node boundary, after the
//! runner's next heartbeat. A second Ctrl-C stops waiting and leaves the job to the
//! server as it is (still running, or canceling), saying so. [`Interrupts`] turns
//! SIGINT into messages; once installed, Ctrl-C no longer kills the process, so every
//! wait of the `run` command listens to it.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::api::Api;
use super::display::{Display, State};
use super::error::ClientError;
use super::sse::{JobEvent, SseDecoder};
use super::types::{Job, JobStatus};

/// A stream that sends nothing (not even a keep-alive) for this long is dead.
const IDLE: Duration = Duration::from_secs(45);
/// How long a refused stream (429) makes the follower poll before trying again.
const STREAM_BACKOFF: Duration = Duration::from_secs(30);
/// How often `/api/v2/health` is read while the job waits in the queue.
const HEALTH_EVERY: Duration = Duration::from_secs(15);

/// SIGINT as messages.
pub struct Interrupts {
    received: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Interrupts {
    /// Takes over Ctrl-C for the rest of the process.
    pub fn install() -> Option<Interrupts> {
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut sigint = signal(SignalKind::interrupt()).ok()?;
            tokio::spawn(async move {
                while sigint.recv().await.is_some() {
                    if sender.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if sender.send(()).is_err() {
                    break;
                }
            }
        });
        Some(Interrupts { received })
    }

    /// The next Ctrl-C (never, once the listener is gone).
    pub async fn next(&mut self) {
        if self.received.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for the next Ctrl-C, or forever when Ctrl-C is not being listened to.
pub async fn next_interrupt(interrupts: &mut Option<Interrupts>) {
    match interrupts {
        Some(interrupts) => interrupts.next().await,
        None => std::future::pending().await,
    }
}

/// How following ended.
#[derive(Debug)]
pub enum Ending {
    /// The job reached a terminal status (read with `GET`). `cancel_requested` when
    /// the user pressed Ctrl-C on the way.
    Finished { job: Job, cancel_requested: bool },
    /// A second Ctrl-C: the job is left to the server as it was.
    Detached { job: Job, cancel_requested: bool },
}

enum Mode {
    Events,
    Poll { until: Option<Instant> },
}

enum StreamEnd {
    /// A terminal status arrived.
    Terminal,
    /// The server closed the stream (its window ended).
    Closed,
    /// The stream broke or went idle.
    Broken,
    /// Ctrl-C settled it.
    Done(Box<Ending>),
}

/// Follows a job until it is terminal (or the user detaches).
pub struct Follower<'a> {
    api: &'a Api,
    display: &'a mut Display,
    interrupts: &'a mut Option<Interrupts>,
    job: Job,
    state: State,
    cancel_requested: bool,
    last_health: Option<Instant>,
}

impl<'a> Follower<'a> {
    pub fn new(
        api: &'a Api,
        job: Job,
        display: &'a mut Display,
        interrupts: &'a mut Option<Interrupts>,
    ) -> Follower<'a> {
        let state = State {
            status: Some(job.status),
            queue_position: job.queue_position,
            progress: job.progress.clone(),
            capacity: None,
        };
        Follower {
            api,
            display,
            interrupts,
            job,
            state,
            cancel_requested: false,
            last_health: None,
        }
    }

    /// Follows to the end.
    pub async fn run(mut self) -> Result<Ending, ClientError> {
        let mut mode = Mode::Events;
        let mut failures = 0u32;
        self.display.update(&self.state);
        loop {
            if self.job.status.is_terminal() {
                return Ok(self.finished());
            }
            match mode {
                Mode::Events => {
                    let link = self.job.urls.as_ref().and_then(|u| u.events.clone());
                    let opened = Instant::now();
                    match self.api.open_events(&self.job.id, link.as_deref()).await {
                        Ok(response) => match self.read_stream(response).await? {
                            StreamEnd::Done(ending) => return Ok(*ending),
                            StreamEnd::Terminal => self.refresh().await?,
                            StreamEnd::Closed => {
                                failures = 0;
                                // A server that closes at once is not hammered.
                                let lasted = opened.elapsed();
                                if lasted < Duration::from_secs(1) {
                                    let rest = Duration::from_secs(1) - lasted;
                                    if let Some(ending) = self.pause(rest).await? {
                                        return Ok(ending);
                                    }
                                }
                                self.refresh().await?;
                            }
                            StreamEnd::Broken => {
                                failures += 1;
                                if let Some(ending) = self.pause(backoff(failures)).await? {
                                    return Ok(ending);
                                }
                                self.refresh().await?;
                            }
                        },
                        Err(e) => match e {
                            // No SSE here: poll from now on.
                            ClientError::Api {
                                status: 404..=406, ..
                            }
                            | ClientError::Server { status: 501, .. }
                            | ClientError::NotV2 { .. } => mode = Mode::Poll { until: None },
                            // Too many streams: poll for a while, then try again.
                            ClientError::Api { status: 429, .. } => {
                                mode = Mode::Poll {
                                    until: Some(Instant::now() + STREAM_BACKOFF),
                                }
                            }
                            ClientError::Server { .. }
                            | ClientError::Connect { .. }
                            | ClientError::Transport { .. } => {
                                failures += 1;
                                if failures > 6 {
                                    return Err(e);
                                }
                                if let Some(ending) = self.pause(backoff(failures)).await? {
                                    return Ok(ending);
                                }
                                // GET retries on its own, and errors out when the
                                // server is really gone.
                                self.refresh().await?;
                            }
                            other => return Err(other),
                        },
                    }
                }
                Mode::Poll { until } => {
                    if until.is_some_and(|t| Instant::now() >= t) {
                        mode = Mode::Events;
                        continue;
                    }
                    if let Some(ending) = self.pause(Duration::from_secs(1)).await? {
                        return Ok(ending);
                    }
                    self.refresh().await?;
                }
            }
        }
    }

    fn finished(&self) -> Ending {
        Ending::Finished {
            job: self.job.clone(),
            cancel_requested: self.cancel_requested,
        }
    }

    /// Reads the job (the authority) and shows it.
    async fn refresh(&mut self) -> Result<(), ClientError> {
        let job = self.api.job(&self.job.id).await?;
        self.set_job(job);
        self.check_capacity().await;
        self.display.update(&self.state);
        Ok(())
    }

    fn set_job(&mut self, job: Job) {
        self.state.status = Some(job.status);
        self.state.queue_position = job.queue_position;
        if job.progress.is_some() {
            self.state.progress = job.progress.clone();
        }
        self.job = job;
    }

    /// While queued, reads the capacity message from health now and then.
    async fn check_capacity(&mut self) {
        if self.state.status != Some(JobStatus::Queued) {
            self.state.capacity = None;
            return;
        }
        if self.last_health.is_some_and(|t| t.elapsed() < HEALTH_EVERY) {
            return;
        }
        self.last_health = Some(Instant::now());
        if let Ok(health) = self.api.health().await {
            self.state.capacity = health
                .pointer("/capacity/message")
                .and_then(|m| m.as_str())
                .filter(|m| !m.is_empty())
                .map(str::to_string);
        }
    }

    /// Sleeps, unless Ctrl-C comes first.
    async fn pause(&mut self, how_long: Duration) -> Result<Option<Ending>, ClientError> {
        tokio::select! {
            () = tokio::time::sleep(how_long) => Ok(None),
            () = next_interrupt(self.interrupts) => self.interrupted().await,
        }
    }

    /// Handles a Ctrl-C: the first cancels, the second detaches.
    async fn interrupted(&mut self) -> Result<Option<Ending>, ClientError> {
        let id = self.job.id.clone();
        if self.cancel_requested {
            self.display.note(&format!(
                "Ctrl-C again: stopped waiting. {id} is left to the server as it was ({}); \
                 see `serverless-comfyui jobs get {id}`",
                self.job.status
            ));
            return Ok(Some(Ending::Detached {
                job: self.job.clone(),
                cancel_requested: true,
            }));
        }
        self.cancel_requested = true;
        self.display.note(&format!(
            "Ctrl-C: canceling {id} (press Ctrl-C again to stop waiting and leave it running)"
        ));
        match self.api.cancel(&id).await {
            Ok(job) => {
                self.set_job(job);
                self.display.update(&self.state);
                if self.job.status.is_terminal() {
                    return Ok(Some(self.finished()));
                }
            }
            Err(e) => self.display.note(&format!("could not cancel {id}: {e}")),
        }
        Ok(None)
    }

    /// Reads one event stream until it ends.
    async fn read_stream(&mut self, response: reqwest::Response) -> Result<StreamEnd, ClientError> {
        let mut chunks = response.bytes_stream();
        let mut decoder = SseDecoder::default();
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(IDLE, chunks.next()) => chunk,
                () = next_interrupt(self.interrupts) => {
                    match self.interrupted().await? {
                        Some(ending) => return Ok(StreamEnd::Done(Box::new(ending))),
                        None => continue,
                    }
                }
            };
            let bytes = match chunk {
                Err(_idle) => return Ok(StreamEnd::Broken),
                Ok(None) => return Ok(StreamEnd::Closed),
                Ok(Some(Err(_))) => return Ok(StreamEnd::Broken),
                Ok(Some(Ok(bytes))) => bytes,
            };
            let mut terminal = false;
            for raw in decoder.push(&bytes) {
                match JobEvent::parse(&raw) {
                    JobEvent::Status {
                        status,
                        queue_position,
                    } => {
                        self.state.status = Some(status);
                        self.state.queue_position = queue_position;
                        terminal |= status.is_terminal();
                    }
                    JobEvent::Progress(progress) => self.state.progress = Some(progress),
                    // Outputs are downloaded from the final job; the error is printed
                    // with the result; queue news is in `progress.message`.
                    JobEvent::Output(_) | JobEvent::Log { .. } | JobEvent::Other(_) => {}
                }
            }
            if terminal {
                return Ok(StreamEnd::Terminal);
            }
            self.check_capacity().await;
            self.display.update(&self.state);
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(failures.min(4)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use serde_json::json;

    use super::*;

    async fn serve(router: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{address}")
    }

    fn job(status: &str) -> serde_json::Value {
        json!({"id": "job_1", "status": status, "urls": {"events": "/api/v2/jobs/job_1/events"}})
    }

    #[tokio::test]
    async fn a_server_without_events_is_polled() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let router = axum::Router::new()
            .route(
                "/api/v2/jobs/{id}",
                get(move || {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move { axum::Json(job(if n < 2 { "running" } else { "succeeded" })) }
                }),
            )
            .route(
                "/api/v2/jobs/{id}/events",
                get(|| async {
                    let body = json!({"error": {"code": "not_implemented", "message": "poll"}});
                    (StatusCode::NOT_IMPLEMENTED, axum::Json(body)).into_response()
                }),
            );
        let api = Api::new(&serve(router).await, None).unwrap();
        let first = Job::from_json(job("queued")).unwrap();
        let mut display = Display::new("job_1", Instant::now());
        let mut interrupts = None;
        let ending = Follower::new(&api, first, &mut display, &mut interrupts)
            .run()
            .await
            .unwrap();
        let Ending::Finished {
            job,
            cancel_requested,
        } = ending
        else {
            panic!("finished")
        };
        assert_eq!(job.status, JobStatus::Succeeded);
        assert!(!cancel_requested);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn events_drive_the_follower_and_a_closed_stream_is_reopened() {
        let opened = Arc::new(AtomicUsize::new(0));
        let streams = opened.clone();
        let reads = opened.clone();
        let router = axum::Router::new()
            .route(
                "/api/v2/jobs/{id}",
                get(move || {
                    // The store says succeeded once the second stream has said so.
                    let done = reads.load(Ordering::SeqCst) >= 2;
                    async move { axum::Json(job(if done { "succeeded" } else { "running" })) }
                }),
            )
            .route(
                "/api/v2/jobs/{id}/events",
                get(move || {
                    let n = streams.fetch_add(1, Ordering::SeqCst);
                    async move {
                        // The first stream closes early (its window ended); the second
                        // carries the job to its end.
                        let body = if n == 0 {
                            "event: status\ndata: {\"status\":\"running\"}\n\n".to_string()
                        } else {
                            "event: progress\ndata: {\"value\":0.5,\"step\":1,\"steps\":2}\n\n\
                             : keep-alive\n\n\
                             event: status\ndata: {\"status\":\"succeeded\"}\n\n"
                                .to_string()
                        };
                        ([("content-type", "text/event-stream")], body)
                    }
                }),
            );
        let api = Api::new(&serve(router).await, None).unwrap();
        let first = Job::from_json(job("queued")).unwrap();
        let mut display = Display::new("job_1", Instant::now());
        let mut interrupts = None;
        let run = Follower::new(&api, first, &mut display, &mut interrupts).run();
        let ending = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("finishes")
            .unwrap();
        let Ending::Finished { job, .. } = ending else {
            panic!("finished")
        };
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "reopened once after the close"
        );
    }
}
