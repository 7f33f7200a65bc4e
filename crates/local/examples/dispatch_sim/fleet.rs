//! The simulated GPU fleet: instances (booting, running a runner, empty, in the warm
//! pool) and the runners on them, with the delays and failures of an ECS capacity
//! provider over an EC2 Auto Scaling group. Pure bookkeeping: no store, no clock.
//!
//! Times are milliseconds since the start of the simulation.

use rand::Rng;
use rand::rngs::StdRng;

pub const MS: i64 = 1000;
pub const MINUTE: i64 = 60 * MS;

/// The cold-start and scaling figures the fleet draws from (docs/costs.md gives sources).
#[derive(Debug, Clone)]
pub struct Delays {
    /// A new GPU instance from zero until ComfyUI is up: the capacity provider notices
    /// the task (~1 min), EC2 boots, the ECS agent registers, the image (several GB) is
    /// pulled, ComfyUI starts and loads its model. 5–12 min.
    pub cold: (i64, i64),
    /// A stopped warm-pool instance with the image already on its disk: start and
    /// register (1–2 min), then ComfyUI starts and loads its model (30–60 s).
    pub from_pool: (i64, i64),
    /// A task placed on an instance that is still running but empty (the capacity
    /// provider has not scaled it in yet): the image is cached; ComfyUI starts.
    pub reuse: (i64, i64),
    /// ECS managed scaling removes an empty instance after its scale-in alarm's 15
    /// one-minute datapoints, then EC2 terminates it.
    pub scale_in_after: i64,
    /// A warm-pool instance being prepared: boots, pulls the image, then stops.
    pub pool_prepare: (i64, i64),
    /// Chance that a new instance cannot be had (InsufficientInstanceCapacity).
    pub capacity_failure: f64,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            cold: (5 * MINUTE, 12 * MINUTE),
            from_pool: (90 * MS, 180 * MS),
            reuse: (30 * MS, 60 * MS),
            scale_in_after: 15 * MINUTE + MINUTE,
            pool_prepare: (5 * MINUTE, 10 * MINUTE),
            capacity_failure: 0.05,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum InstanceState {
    /// Running (billed): booting, hosting a runner, or empty since `empty_since`.
    Running {
        empty_since: Option<i64>,
    },
    /// A warm-pool instance being prepared (billed) until `ready_at`, then stopped.
    Preparing {
        ready_at: i64,
    },
    /// Stopped in the warm pool: only its disk is billed.
    Stopped,
    Terminated,
}

#[derive(Debug)]
struct Instance {
    state: InstanceState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunnerState {
    Booting { ready_at: i64 },
    Idle { since: i64 },
    Busy { until: i64 },
    Gone,
}

#[derive(Debug)]
pub struct SimRunner {
    pub id: String,
    pub launched_at: i64,
    pub state: RunnerState,
    instance: usize,
    /// Whether the runner exits after the idle timeout (an ECS service's tasks do not).
    pub idle_exit: bool,
}

/// What the fleet cost over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Milliseconds GPU instances ran (booting, busy or idle).
    pub running_ms: i64,
    /// Milliseconds warm-pool instances sat stopped (their disk is billed).
    pub stopped_ms: i64,
    /// Milliseconds runners spent on jobs.
    pub busy_ms: i64,
    pub cold_starts: u32,
    pub pool_starts: u32,
    pub reuse_starts: u32,
    pub capacity_failures: u32,
}

pub struct SimFleet {
    rng: StdRng,
    delays: Delays,
    instances: Vec<Instance>,
    pub runners: Vec<SimRunner>,
    pub usage: Usage,
    pool_size: usize,
    /// The time up to which usage is counted.
    accounted_to: i64,
}

impl SimFleet {
    pub fn new(rng: StdRng, delays: Delays, pool_size: usize) -> Self {
        let mut fleet = SimFleet {
            rng,
            delays,
            instances: Vec::new(),
            runners: Vec::new(),
            usage: Usage::default(),
            pool_size,
            accounted_to: 0,
        };
        // The pool starts full (it was filled when the stack was deployed).
        for _ in 0..pool_size {
            fleet.instances.push(Instance {
                state: InstanceState::Stopped,
            });
        }
        fleet
    }

    fn draw(&mut self, (lo, hi): (i64, i64)) -> i64 {
        self.rng.gen_range(lo..=hi)
    }

    /// Starts a runner's task: on an empty running instance if there is one, else on a
    /// warm-pool instance, else on a new instance (which may not be available).
    pub fn start_runner(&mut self, id: String, now: i64, idle_exit: bool) -> Result<(), String> {
        let empty = self.instances.iter().position(|i| {
            matches!(
                i.state,
                InstanceState::Running {
                    empty_since: Some(_)
                }
            )
        });
        let pooled = self
            .instances
            .iter()
            .position(|i| i.state == InstanceState::Stopped);
        let (instance, delay) = if let Some(i) = empty {
            self.usage.reuse_starts += 1;
            (i, self.draw(self.delays.reuse))
        } else if let Some(i) = pooled {
            self.usage.pool_starts += 1;
            // The group refills the pool with a new instance, prepared then stopped.
            let ready_at = now + self.draw(self.delays.pool_prepare);
            self.instances.push(Instance {
                state: InstanceState::Preparing { ready_at },
            });
            (i, self.draw(self.delays.from_pool))
        } else {
            if self.rng.r#gen::<f64>() < self.delays.capacity_failure {
                self.usage.capacity_failures += 1;
                return Err("InsufficientInstanceCapacity: no g6.xlarge capacity in the requested zones (simulated)".into());
            }
            self.usage.cold_starts += 1;
            self.instances.push(Instance {
                state: InstanceState::Running { empty_since: None },
            });
            (self.instances.len() - 1, self.draw(self.delays.cold))
        };
        self.instances[instance].state = InstanceState::Running { empty_since: None };
        self.runners.push(SimRunner {
            id,
            launched_at: now,
            state: RunnerState::Booting {
                ready_at: now + delay,
            },
            instance,
            idle_exit,
        });
        Ok(())
    }

    /// The runner is gone (idle exit, stopped by its service): its instance empties.
    pub fn runner_gone(&mut self, runner: usize, now: i64) {
        self.runners[runner].state = RunnerState::Gone;
        let instance = self.runners[runner].instance;
        self.instances[instance].state = InstanceState::Running {
            empty_since: Some(now),
        };
    }

    /// The next time an instance changes by itself (scale-in, pool preparation done).
    pub fn next_instance_event(&self) -> Option<i64> {
        self.instances
            .iter()
            .filter_map(|i| match i.state {
                InstanceState::Running {
                    empty_since: Some(since),
                } => Some(since + self.delays.scale_in_after),
                InstanceState::Preparing { ready_at } => Some(ready_at),
                _ => None,
            })
            .min()
    }

    /// Counts usage up to `now`, then applies the instance changes due at `now`.
    pub fn advance(&mut self, now: i64) {
        let span = now - self.accounted_to;
        if span > 0 {
            for i in &self.instances {
                match i.state {
                    InstanceState::Running { .. } | InstanceState::Preparing { .. } => {
                        self.usage.running_ms += span
                    }
                    InstanceState::Stopped => self.usage.stopped_ms += span,
                    InstanceState::Terminated => {}
                }
            }
            for r in &self.runners {
                if matches!(r.state, RunnerState::Busy { .. }) {
                    self.usage.busy_ms += span;
                }
            }
            self.accounted_to = now;
        }
        let scale_in_after = self.delays.scale_in_after;
        let pool_size = self.pool_size;
        let mut stopped = self
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Stopped)
            .count();
        for i in &mut self.instances {
            match i.state {
                InstanceState::Running {
                    empty_since: Some(since),
                } if since + scale_in_after <= now => i.state = InstanceState::Terminated,
                InstanceState::Preparing { ready_at } if ready_at <= now => {
                    // ECS does not support reuse on scale-in: a surplus one terminates.
                    i.state = if stopped < pool_size {
                        stopped += 1;
                        InstanceState::Stopped
                    } else {
                        InstanceState::Terminated
                    };
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn fleet(pool: usize) -> SimFleet {
        let delays = Delays {
            capacity_failure: 0.0,
            ..Delays::default()
        };
        SimFleet::new(StdRng::seed_from_u64(1), delays, pool)
    }

    fn ready_at(f: &SimFleet, r: usize) -> i64 {
        match f.runners[r].state {
            RunnerState::Booting { ready_at } => ready_at,
            other => panic!("not booting: {other:?}"),
        }
    }

    #[test]
    fn a_cold_instance_is_billed_from_launch_to_scale_in() {
        let mut f = fleet(0);
        f.start_runner("a".into(), 0, true).unwrap();
        let ready = ready_at(&f, 0);
        assert!((5 * MINUTE..=12 * MINUTE).contains(&ready), "{ready}");
        assert_eq!(f.usage.cold_starts, 1);
        f.advance(ready);
        f.runners[0].state = RunnerState::Busy {
            until: ready + MINUTE,
        };
        f.advance(ready + MINUTE);
        f.runner_gone(0, ready + MINUTE);
        let gone_at = ready + MINUTE + f.delays.scale_in_after;
        assert_eq!(f.next_instance_event(), Some(gone_at));
        f.advance(gone_at);
        f.advance(gone_at + 60 * MINUTE);
        assert_eq!(
            f.usage.running_ms, gone_at,
            "billed until scale-in, not after"
        );
        assert_eq!(f.usage.busy_ms, MINUTE);
        assert_eq!(f.next_instance_event(), None);
    }

    #[test]
    fn an_empty_instance_is_reused_before_scale_in() {
        let mut f = fleet(0);
        f.start_runner("a".into(), 0, true).unwrap();
        f.advance(20 * MINUTE);
        f.runner_gone(0, 20 * MINUTE);
        f.start_runner("b".into(), 25 * MINUTE, true).unwrap();
        assert_eq!(f.usage.reuse_starts, 1);
        assert_eq!(f.usage.cold_starts, 1, "no new instance");
        let ready = ready_at(&f, 1) - 25 * MINUTE;
        assert!((30 * MS..=60 * MS).contains(&ready), "{ready}");
        assert_eq!(
            f.next_instance_event(),
            None,
            "the instance is in use again"
        );
    }

    #[test]
    fn the_warm_pool_serves_first_then_refills() {
        let mut f = fleet(1);
        f.advance(10 * MINUTE);
        assert_eq!(
            f.usage.stopped_ms,
            10 * MINUTE,
            "a stopped instance pays its disk"
        );
        assert_eq!(f.usage.running_ms, 0);
        f.start_runner("a".into(), 10 * MINUTE, true).unwrap();
        assert_eq!(f.usage.pool_starts, 1);
        let ready = ready_at(&f, 0) - 10 * MINUTE;
        assert!((90 * MS..=180 * MS).contains(&ready), "{ready}");
        // The refill runs (billed) until it is prepared, then stops.
        let prepared = f.next_instance_event().unwrap();
        f.advance(prepared);
        assert_eq!(
            f.usage.running_ms,
            2 * (prepared - 10 * MINUTE),
            "the runner's instance and the refill"
        );
        // A second worker now also comes from the pool, not cold.
        f.start_runner("b".into(), prepared, true).unwrap();
        assert_eq!((f.usage.pool_starts, f.usage.cold_starts), (2, 0));
    }

    #[test]
    fn capacity_failures_start_nothing() {
        let mut f = SimFleet::new(
            StdRng::seed_from_u64(1),
            Delays {
                capacity_failure: 1.0,
                ..Delays::default()
            },
            0,
        );
        assert!(f.start_runner("a".into(), 0, true).is_err());
        assert!(f.runners.is_empty());
        f.advance(60 * MINUTE);
        assert_eq!(f.usage.running_ms, 0);
        assert_eq!(f.usage.capacity_failures, 1);
    }
}
