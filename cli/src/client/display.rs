//! What the user watches while a job runs: an `indicatif` progress bar on a terminal,
//! plain milestone lines otherwise (CI logs, `2> file`).
//!
//! On a terminal, stderr shows one line that changes with the job:
//!
//! ```text
//! ⠹ 00:00:04 queued · waiting for a worker · position 0
//! ⠹ 00:00:41 queued · waiting for GPU capacity: VcpuLimitExceeded
//! ⠼ 00:00:52 [███████████░░░░░░░░░░░░░░░░░░░░░]  35% KSampler (node 3) · step 7/20 · node 2/7
//! ⠧ 00:01:03 canceling · waiting for the worker to stop the prompt
//! ```
//!
//! The elapsed time counts from the submit. The percentage is the server's
//! `progress.value`; the node class, step and node counts come from the same snapshot.
//! When stderr is not a terminal, the same information comes as one line per
//! milestone (status, node, message), never one per step, so logs stay short.
//!
//! Everything goes to stderr: stdout is kept for the result (and for `--json`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::types::{JobStatus, Progress};

/// The live view of one job.
pub struct Display {
    bar: ProgressBar,
    tty: bool,
    started: Instant,
    job_id: String,
    style: Option<Style>,
    last_milestone: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Waiting,
    Running,
}

/// What the display shows: the latest known state.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub status: Option<JobStatus>,
    pub queue_position: Option<u64>,
    pub progress: Option<Progress>,
    /// From `/api/v2/health` while queued, when the job's own message lacks it.
    pub capacity: Option<String>,
}

impl Display {
    /// A display for `job_id`, drawing a bar only when stderr is a terminal.
    pub fn new(job_id: &str, started: Instant) -> Display {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Display {
            bar,
            tty,
            started,
            job_id: job_id.to_string(),
            style: None,
            last_milestone: None,
        }
    }

    /// Prints a line above the bar (or plainly, without one).
    pub fn note(&self, line: &str) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Redraws for `state`.
    pub fn update(&mut self, state: &State) {
        let Some(status) = state.status else { return };
        let (style, message) = describe(state);
        if self.tty {
            if self.style != Some(style) {
                self.bar.set_style(bar_style(style));
                self.style = Some(style);
            }
            if let Some(value) = state.progress.as_ref().and_then(|p| p.value) {
                self.bar
                    .set_position((value.clamp(0.0, 1.0) * 1000.0) as u64);
            }
            self.bar.set_message(message);
        } else {
            let milestone = milestone(status, state);
            if self.last_milestone.as_ref() != Some(&milestone) {
                // Plain lines always name the status (the bar's style shows it).
                let line = if status == JobStatus::Running {
                    format!("running · {message}")
                } else {
                    message
                };
                eprintln!("[{}] {} {line}", clock(self.started.elapsed()), self.job_id,);
                self.last_milestone = Some(milestone);
            }
        }
    }

    /// Removes the bar; notes printed above it stay.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

fn bar_style(style: Style) -> ProgressStyle {
    let template = match style {
        Style::Waiting => "{spinner:.yellow} {elapsed_precise} {wide_msg}",
        Style::Running => {
            "{spinner:.green} {elapsed_precise} [{bar:32.cyan/blue}] {percent:>3}% {wide_msg}"
        }
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("█▓░")
}

/// The message for the current state, and the bar style it goes with.
fn describe(state: &State) -> (Style, String) {
    let status = state.status.unwrap_or(JobStatus::Other);
    let progress = state.progress.clone().unwrap_or_default();
    let message = progress.message.as_deref().filter(|m| !m.is_empty());
    match status {
        JobStatus::Queued => {
            let mut parts = vec!["queued".to_string()];
            parts.push(message.unwrap_or("waiting for a worker").to_string());
            if let Some(capacity) = &state.capacity
                && !message.is_some_and(|m| m.contains(capacity.as_str()))
            {
                parts.push(format!("capacity: {capacity}"));
            }
            if let Some(position) = state.queue_position {
                parts.push(format!("position {position}"));
            }
            (Style::Waiting, parts.join(" · "))
        }
        JobStatus::Running => {
            let mut parts = Vec::new();
            match (&progress.current_node_class, &progress.current_node) {
                (Some(class), Some(node)) => parts.push(format!("{class} (node {node})")),
                (Some(class), None) => parts.push(class.clone()),
                (None, Some(node)) => parts.push(format!("node {node}")),
                (None, None) => parts.push(message.unwrap_or("running").to_string()),
            }
            if let (Some(step), Some(steps)) = (progress.step, progress.steps) {
                parts.push(format!("step {step}/{steps}"));
            }
            match (progress.nodes_done, progress.nodes_total) {
                (Some(done), Some(total)) if total > 0 => {
                    parts.push(format!("node {}/{total}", (done + 1).min(total)));
                }
                _ => {}
            }
            (Style::Running, parts.join(" · "))
        }
        JobStatus::Canceling => (
            Style::Waiting,
            format!(
                "canceling · {}",
                message.unwrap_or("waiting for the worker to stop the prompt")
            ),
        ),
        other => (Style::Waiting, other.to_string()),
    }
}

/// What must change for a plain line to be printed: not the step.
fn milestone(status: JobStatus, state: &State) -> String {
    let progress = state.progress.clone().unwrap_or_default();
    let message = if status == JobStatus::Running {
        None
    } else {
        progress.message
    };
    format!(
        "{status}|{:?}|{:?}|{:?}",
        progress.current_node, message, state.capacity
    )
}

/// `mm:ss.s`, for plain lines.
fn clock(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    format!("{:02}:{:04.1}", (secs / 60.0) as u64, secs % 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(json: serde_json::Value) -> Option<Progress> {
        Some(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn messages_say_what_happens() {
        let queued = State {
            status: Some(JobStatus::Queued),
            queue_position: Some(2),
            progress: progress(serde_json::json!({"message": "waiting for a worker"})),
            capacity: None,
        };
        assert_eq!(
            describe(&queued).1,
            "queued · waiting for a worker · position 2"
        );
        let starved = State {
            capacity: Some("VcpuLimitExceeded".into()),
            ..queued.clone()
        };
        assert_eq!(
            describe(&starved).1,
            "queued · waiting for a worker · capacity: VcpuLimitExceeded · position 2"
        );
        let running = State {
            status: Some(JobStatus::Running),
            queue_position: None,
            progress: progress(serde_json::json!({
                "value": 0.35, "nodes_done": 1, "nodes_total": 7, "current_node": "3",
                "current_node_class": "KSampler", "step": 7, "steps": 20})),
            capacity: None,
        };
        assert_eq!(
            describe(&running).1,
            "KSampler (node 3) · step 7/20 · node 2/7"
        );
        assert_eq!(clock(Duration::from_millis(61_250)), "01:01.2");
    }
}
