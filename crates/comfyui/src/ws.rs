//! The WebSocket as a typed event stream that reconnects by itself.
//!
//! Traps this module handles for you:
//! - **Reusing a clientId.** ComfyUI replaces the session of a reused clientId but does
//!   not close the old socket; when the old connection later ends, its cleanup removes
//!   the *new* session, which then silently receives nothing. So before reconnecting we
//!   close the old socket and wait for the close to complete (bounded), then back off.
//! - **Nothing is replayed** after a reconnect, except one `executing {node}` without a
//!   `prompt_id`. Whoever consumes the stream must re-read `/history` (or `/queue`) on
//!   [`StreamItem::Reconnected`]: `Client::run_prompt` does.
//! - **Feature flags** must be the *first* text frame; the reply is a `feature_flags`
//!   event. With `supports_preview_metadata` the server sends type-4 previews (with
//!   node and prompt ids) instead of type 1.
//! - The server sends no pings.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::error::{Error, Result};
use crate::events::Event;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the stream connects and reconnects.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Send `{"type":"feature_flags","data":{"supports_preview_metadata":true}}` first.
    pub preview_metadata: bool,
    pub connect_timeout: Duration,
    /// How long to wait for the old socket's close handshake before reconnecting.
    pub close_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failed reconnects before giving up ([`StreamItem::GaveUp`]).
    pub max_reconnect_attempts: u32,
    /// Reconnect when nothing (not even a ping answer) arrives for this long. `None`:
    /// never (ComfyUI is silent between prompts).
    pub idle_timeout: Option<Duration>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            preview_metadata: true,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            max_reconnect_attempts: 6,
            idle_timeout: None,
        }
    }
}

/// What the stream yields.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // events are the common case; boxing them buys nothing
pub enum StreamItem {
    Event(Event),
    /// The connection dropped; reconnecting.
    Disconnected {
        reason: String,
    },
    /// Connected again after a drop. Events in between are lost: re-read history.
    Reconnected {
        attempts: u32,
    },
    /// Could not reconnect; the stream ends after this.
    GaveUp {
        reason: String,
    },
}

/// A followed `/ws?clientId=...` connection.
pub struct EventStream {
    rx: mpsc::Receiver<StreamItem>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    client_id: String,
}

async fn open(url: &Url, cfg: &StreamConfig) -> Result<Socket> {
    let fut = tokio_tungstenite::connect_async(url.as_str());
    let (mut ws, _) = tokio::time::timeout(cfg.connect_timeout, fut)
        .await
        .map_err(|_| Error::WebSocket(format!("connect to {url} timed out")))?
        .map_err(|e| Error::WebSocket(format!("connect to {url}: {e}")))?;
    if cfg.preview_metadata {
        let hello = r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#;
        ws.send(Message::Text(hello.into()))
            .await
            .map_err(|e| Error::WebSocket(e.to_string()))?;
    }
    Ok(ws)
}

async fn close(mut ws: Socket, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let _ = ws.close(None).await;
        // Drain until the server's close (or EOF) so the server has really let go.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

impl EventStream {
    /// Connect to `ws_url` (e.g. `ws://127.0.0.1:8188/ws`) as `client_id`. The first
    /// connection must succeed; later drops are retried with backoff.
    pub async fn connect(ws_url: &Url, client_id: &str, cfg: StreamConfig) -> Result<EventStream> {
        let mut url = ws_url.clone();
        url.query_pairs_mut()
            .clear()
            .append_pair("clientId", client_id);
        let ws = open(&url, &cfg).await?;
        let (tx, rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(pump(ws, url, cfg, tx, stop_rx));
        Ok(EventStream {
            rx,
            stop: Some(stop_tx),
            task: Some(task),
            client_id: client_id.to_string(),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The next item; `None` once the stream has ended (after `GaveUp`, or `close`).
    pub async fn next(&mut self) -> Option<StreamItem> {
        self.rx.recv().await
    }

    /// Close the socket (with a close handshake) and stop.
    pub async fn close(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn pump(
    mut ws: Socket,
    url: Url,
    cfg: StreamConfig,
    tx: mpsc::Sender<StreamItem>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        // Read until the connection drops or we are told to stop.
        let reason = loop {
            let idle = cfg
                .idle_timeout
                .unwrap_or(Duration::from_secs(365 * 24 * 3600));
            tokio::select! {
                _ = &mut stop => {
                    close(ws, cfg.close_timeout).await;
                    return;
                }
                r = tokio::time::timeout(idle, ws.next()) => match r {
                    Err(_) => break "no message within the idle timeout".to_string(),
                    Ok(None) => break "connection closed".to_string(),
                    Ok(Some(Err(e))) => break e.to_string(),
                    Ok(Some(Ok(m))) => {
                        let ev = match m {
                            Message::Text(t) => match Event::from_text(t.as_str()) {
                                Ok(e) => e,
                                Err(e) => {
                                    tracing::warn!("undecodable ComfyUI frame: {e}");
                                    continue;
                                }
                            },
                            Message::Binary(b) => Event::from_binary(&b),
                            Message::Close(_) => break "closed by the server".to_string(),
                            _ => continue,
                        };
                        if tx.send(StreamItem::Event(ev)).await.is_err() {
                            close(ws, cfg.close_timeout).await;
                            return;
                        }
                    }
                }
            }
        };
        tracing::warn!(%reason, "ComfyUI WebSocket dropped; reconnecting");
        if tx
            .send(StreamItem::Disconnected {
                reason: reason.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        close(ws, cfg.close_timeout).await;
        let mut delay = cfg.backoff_initial;
        let mut attempts = 0;
        let mut last_err = reason;
        ws = loop {
            if attempts >= cfg.max_reconnect_attempts {
                let _ = tx
                    .send(StreamItem::GaveUp {
                        reason: format!(
                            "{attempts} reconnect attempts failed; last error: {last_err}"
                        ),
                    })
                    .await;
                return;
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            attempts += 1;
            delay = (delay * 2).min(cfg.backoff_max);
            match open(&url, &cfg).await {
                Ok(ws) => break ws,
                Err(e) => last_err = e.to_string(),
            }
        };
        if tx.send(StreamItem::Reconnected { attempts }).await.is_err() {
            close(ws, cfg.close_timeout).await;
            return;
        }
    }
}
