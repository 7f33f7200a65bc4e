//! The arrival trace: a seeded, bursty working day, repeated for each simulated day.
//!
//! Per day (hours of the simulated clock):
//! - 00–07 and 22–24: quiet, Poisson arrivals at 0.5 jobs/hour;
//! - 07–09 and 18–22: 3 jobs/hour;
//! - 09–18: 6 jobs/hour, plus 5 bursts at random times, each 10–40 jobs spread over
//!   1–5 minutes (a user queueing a batch, a frontend demo);
//! - one burst of 10–40 jobs in the evening.
//!
//! Job durations (GPU execution once claimed): 70% 10–40 s (an SD 1.5 / SDXL image),
//! 25% 40–120 s (large images, upscales), 5% 2–10 min (video, long batches).

use rand::Rng;
use rand::rngs::StdRng;

use crate::fleet::{MINUTE, MS};

const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: i64,
    pub runs_for: i64,
}

fn poisson(rng: &mut StdRng, from: i64, to: i64, per_hour: f64, out: &mut Vec<i64>) {
    let mut t = from as f64;
    loop {
        let u: f64 = rng.r#gen::<f64>().max(1e-12);
        t += -u.ln() / per_hour * HOUR as f64;
        if t >= to as f64 {
            return;
        }
        out.push(t as i64);
    }
}

fn burst(rng: &mut StdRng, from: i64, to: i64, out: &mut Vec<i64>) {
    let start = rng.gen_range(from..to);
    let size = rng.gen_range(10..=40);
    let spread = rng.gen_range(MINUTE..=5 * MINUTE);
    for _ in 0..size {
        out.push(start + rng.gen_range(0..spread));
    }
}

fn duration(rng: &mut StdRng) -> i64 {
    let p: f64 = rng.r#gen();
    if p < 0.70 {
        rng.gen_range(10 * MS..=40 * MS)
    } else if p < 0.95 {
        rng.gen_range(40 * MS..=120 * MS)
    } else {
        rng.gen_range(2 * MINUTE..=10 * MINUTE)
    }
}

/// `days` days of arrivals, sorted.
pub fn generate(rng: &mut StdRng, days: u32) -> Vec<Arrival> {
    let mut times = Vec::new();
    for d in 0..i64::from(days) {
        let h = |x: i64| d * DAY + x * HOUR;
        poisson(rng, h(0), h(7), 0.5, &mut times);
        poisson(rng, h(7), h(9), 3.0, &mut times);
        poisson(rng, h(9), h(18), 6.0, &mut times);
        for _ in 0..5 {
            burst(rng, h(9), h(18), &mut times);
        }
        poisson(rng, h(18), h(22), 3.0, &mut times);
        burst(rng, h(18), h(21), &mut times);
        poisson(rng, h(22), h(24), 0.5, &mut times);
    }
    times.sort_unstable();
    times
        .into_iter()
        .map(|at| Arrival {
            at,
            runs_for: duration(rng),
        })
        .collect()
}

pub fn day_ms() -> i64 {
    DAY
}
