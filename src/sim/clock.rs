//! Simulated time: real time since start multiplied by `time_speedup`, plus any manual advance.

use std::time::Instant;

#[derive(Debug)]
pub(crate) struct SimClock {
    start: Instant,
    speedup: f64,
    /// Simulated seconds added by [`SimClock::advance`].
    offset: f64,
}

impl SimClock {
    pub fn new(speedup: f64) -> Self {
        let speedup = if speedup.is_finite() && speedup > 0.0 { speedup } else { 1.0 };
        Self { start: Instant::now(), speedup, offset: 0.0 }
    }

    /// Simulated seconds since the simulator started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.speedup + self.offset
    }

    pub fn advance(&mut self, secs: f64) {
        if secs.is_finite() && secs > 0.0 {
            self.offset += secs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedup_and_advance() {
        let mut c = SimClock::new(1000.0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(c.now() >= 5.0, "{}", c.now());
        let before = c.now();
        c.advance(100.0);
        assert!(c.now() >= before + 100.0);
    }
}
