//! Server-Sent Events: the wire format of `GET /api/v2/jobs/{id}/events`, decoded.
//!
//! SSE is text: lines of `field: value`, and a blank line ends an event. Only two
//! fields matter here: `event` (the name) and `data` (JSON; several `data` lines are
//! joined with newlines). Lines starting with `:` are comments, which servers send as
//! keep-alives. [`SseDecoder`] takes the bytes as they arrive, in chunks of any size
//! (a chunk may end in the middle of a line, even in the middle of a UTF-8 character),
//! and hands back whole events.
//!
//! [`JobEvent`] then gives the v2 events their meaning:
//!
//! | event | data |
//! |---|---|
//! | `status` | `{status, queue_position}`: on connect, on every change, and last |
//! | `progress` | a v2 `Progress` snapshot |
//! | `output` | a v2 `Output`, once each, as it is committed |
//! | `log` | `{level, message}`: queue and capacity news, the error on failure |
//!
//! Anything else (a `preview`, a newer event) is [`JobEvent::Other`] and is skipped.

use serde::Deserialize;

use super::types::{JobStatus, Output, Progress};

/// One raw event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop(); // '\n'
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return None;
            }
            return Some(SseEvent {
                event: self.event.take().unwrap_or_else(|| "message".into()),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // id, retry: not needed (the server replays a snapshot on reconnect)
        }
        None
    }
}

/// A v2 job event.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Status {
        status: JobStatus,
        queue_position: Option<u64>,
    },
    Progress(Progress),
    Output(Box<OutputEvent>),
    Log {
        level: String,
        message: String,
    },
    Other(String),
}

/// The parts of an `output` event the client shows.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvent {
    pub node_id: String,
    pub name: String,
}

impl JobEvent {
    /// Gives a raw event its meaning; malformed data reads as [`JobEvent::Other`].
    pub fn parse(raw: &SseEvent) -> JobEvent {
        #[derive(Deserialize)]
        struct Status {
            status: JobStatus,
            #[serde(default)]
            queue_position: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Log {
            #[serde(default)]
            level: Option<String>,
            #[serde(default)]
            message: Option<String>,
        }
        let other = || JobEvent::Other(raw.event.clone());
        match raw.event.as_str() {
            "status" => serde_json::from_str::<Status>(&raw.data).map_or_else(
                |_| other(),
                |s| JobEvent::Status {
                    status: s.status,
                    queue_position: s.queue_position,
                },
            ),
            "progress" => serde_json::from_str::<Progress>(&raw.data)
                .map_or_else(|_| other(), JobEvent::Progress),
            "output" => serde_json::from_str::<Output>(&raw.data).map_or_else(
                |_| other(),
                |o| {
                    JobEvent::Output(Box::new(OutputEvent {
                        node_id: o.node_id,
                        name: o.name,
                    }))
                },
            ),
            "log" => serde_json::from_str::<Log>(&raw.data).map_or_else(
                |_| other(),
                |l| JobEvent::Log {
                    level: l.level.unwrap_or_else(|| "info".into()),
                    message: l.message.unwrap_or_default(),
                },
            ),
            _ => other(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_decode_the_same() {
        let wire = ": keep-alive\r\n\
                    event: status\r\ndata: {\"status\":\"queued\",\"queue_position\":2}\r\n\r\n\
                    event: progress\ndata: {\"value\":0.5,\"step\":3,\"steps\":20,\
                    \"current_node_class\":\"KSampler\",\"message\":\"café\"}\n\n\
                    data: line one\ndata: line two\n\n";
        let whole = SseDecoder::default().push(wire.as_bytes());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[2].event, "message");
        assert_eq!(whole[2].data, "line one\nline two");
        // Byte by byte, splitting the multi-byte 'é' too.
        let mut decoder = SseDecoder::default();
        let mut split = Vec::new();
        for byte in wire.as_bytes() {
            split.extend(decoder.push(std::slice::from_ref(byte)));
        }
        assert_eq!(split, whole);
        assert_eq!(
            JobEvent::parse(&whole[0]),
            JobEvent::Status {
                status: JobStatus::Queued,
                queue_position: Some(2)
            }
        );
        let JobEvent::Progress(p) = JobEvent::parse(&whole[1]) else {
            panic!("progress")
        };
        assert_eq!(p.step, Some(3));
        assert_eq!(p.current_node_class.as_deref(), Some("KSampler"));
        assert_eq!(p.message.as_deref(), Some("café"));
    }

    #[test]
    fn unknown_and_malformed_events_are_other() {
        let preview = SseEvent {
            event: "preview".into(),
            data: "{}".into(),
        };
        assert_eq!(JobEvent::parse(&preview), JobEvent::Other("preview".into()));
        let broken = SseEvent {
            event: "status".into(),
            data: "not json".into(),
        };
        assert_eq!(JobEvent::parse(&broken), JobEvent::Other("status".into()));
        let log = SseEvent {
            event: "log".into(),
            data: r#"{"level":"warning","message":"waiting for GPU capacity: VcpuLimitExceeded"}"#
                .into(),
        };
        assert_eq!(
            JobEvent::parse(&log),
            JobEvent::Log {
                level: "warning".into(),
                message: "waiting for GPU capacity: VcpuLimitExceeded".into()
            }
        );
    }
}
