//! `dev`'s HTTP server: HTTP/1.1 over hyper, with the limits `axum::serve` lacks.
//!
//! - **Header timeout.** A client has [`ServeLimits::header_read_timeout`] to send a
//!   request's headers. hyper starts that timer whenever the connection waits for a
//!   request, so it is also the idle keep-alive timeout: a connection that sends
//!   nothing, or half a request line, is closed when it runs out.
//! - **Connection cap.** At most [`ServeLimits::max_connections`] connections are
//!   served at once. At the cap the server stops accepting (new connections wait in
//!   the kernel's backlog) until one closes, so a flood of idle sockets cannot exhaust
//!   the process's file descriptors and starve health and everyone else.
//! - **Graceful shutdown.** When `shutdown` resolves the server stops accepting, asks
//!   every connection to finish its request in flight and close, and returns when all
//!   have.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Limits on what clients may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time to send a request's headers, and the longest a keep-alive connection may
    /// sit idle between requests.
    pub header_read_timeout: Duration,
    /// Connections served at once; beyond it, accepting pauses.
    pub max_connections: usize,
}

/// File descriptors kept free beyond the connection cap: databases, blob files,
/// runner pipes, the simulator's sockets.
pub const RESERVED_FDS: usize = 256;

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 2048,
        }
    }
}

impl ServeLimits {
    /// These limits, with the connection cap lowered to what the open-file limit
    /// allows (raising the soft limit to the hard one first, as servers do).
    pub fn fitted_to_fd_limit(mut self) -> Self {
        if let Some(fds) = raise_fd_limit() {
            let room = fds.saturating_sub(RESERVED_FDS).max(1);
            if room < self.max_connections {
                tracing::warn!(
                    open_files = fds,
                    cap = room,
                    "the open-file limit lowers the connection cap"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now.
fn raise_fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write only `limit`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
    }
    #[cfg(not(unix))]
    None
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Connections watch `stop` to begin their graceful shutdown; each holds a
    // `done` receiver, so `done_tx.closed()` resolves once they all ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken:
                    // wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: an SSE event written behind an unacknowledged one goes out at
        // once, not after the client's delayed ACK (up to 40 ms on Linux).
        let _ = tcp.set_nodelay(true);
        let service = router
            .clone()
            .map_request(|request: Request<Incoming>| request.map(Body::new));
        let service = TowerToHyperService::new(service);
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _done = done;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
}
