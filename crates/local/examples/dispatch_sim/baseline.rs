//! The baseline: the common ECS pattern of an ECS service whose desired count follows a
//! CloudWatch alarm on the work queue's `ApproximateNumberOfMessagesVisible`, with step
//! scaling (see the crate docs of `main.rs`).

use jobs::ports::QueueName;

use crate::fleet::{MS, RunnerState};
use crate::{MAX_WORKERS, World};

/// The baseline's alarm and ECS service state.
#[derive(Default)]
pub(crate) struct Alarm {
    desired: u32,
    /// The datapoint of the previous minute (visible, in flight).
    previous: (u64, u64),
    quiet_minutes: u32,
    /// The last scale-out: when, and the capacity it set out from.
    cooldown: Option<(i64, u32)>,
}

impl World {
    /// The baseline's minute: the alarm on the previous datapoint, then the service.
    pub(crate) async fn baseline_minute(&mut self) -> anyhow::Result<()> {
        let now = self.now();
        let depth = self.ports.queue.depth(QueueName::Work).await?;
        let (visible, in_flight) =
            std::mem::replace(&mut self.alarm.previous, (depth.visible, depth.in_flight));
        let a = &mut self.alarm;
        if visible >= 1 {
            a.quiet_minutes = 0;
            let step = if visible >= 10 {
                4
            } else if visible >= 5 {
                2
            } else {
                1
            };
            // Step scaling's cooldown: a trigger inside it adds only what exceeds the
            // scale-out already under way.
            let base = match a.cooldown {
                Some((at, from)) if now - at < 300 * MS => from,
                _ => {
                    a.cooldown = Some((now, a.desired));
                    a.desired
                }
            };
            a.desired = a.desired.max((base + step).min(MAX_WORKERS));
        } else if visible + in_flight == 0 {
            a.quiet_minutes += 1;
            if a.quiet_minutes >= 10 {
                a.desired = 0;
            }
        } else {
            a.quiet_minutes = 0;
        }
        // The ECS service converges on the desired count.
        let states = self.runner_states();
        let running = states.len() as u32;
        if running < self.alarm.desired {
            for _ in running..self.alarm.desired {
                // A failed placement is retried at the next minute.
                if self.launcher.start(false).is_err() {
                    break;
                }
            }
        } else if running > self.alarm.desired {
            let mut surplus = running - self.alarm.desired;
            for (r, state, _) in states {
                if surplus > 0 && !matches!(state, RunnerState::Busy { .. }) {
                    self.exit(r).await?;
                    surplus -= 1;
                }
            }
        }
        Ok(())
    }
}
