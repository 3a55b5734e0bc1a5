//! Flood control for one connection: a token bucket over the frames a client initiates (sends,
//! pings and WebSocket ping/pong frames, refreshes, acks of nothing waiting for them, refused
//! frames), and the rule for when refusing becomes closing.

use std::time::Instant;

/// Burst allowance, in seconds of the sustained rate.
const BURST_SECONDS: f64 = 10.0;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse this frame (`rate_limited`), keep the connection.
    Refuse,
    /// The client kept flooding after being refused: close with 1008.
    Close,
}

#[derive(Debug)]
pub struct FloodGuard {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
    /// Frames refused since the last one allowed.
    strikes: u32,
    /// Refusals in a row that end the connection: one second's worth of the sustained rate.
    max_strikes: u32,
}

impl FloodGuard {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            capacity: rate * BURST_SECONDS,
            tokens: rate * BURST_SECONDS,
            last: Instant::now(),
            strikes: 0,
            max_strikes: per_second.max(1),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        self.check_n(now, 1)
    }

    /// Counts a frame as `n` frames (a `watch` of `n` users; at most the burst allowance, so that
    /// any frame can pass after a pause). A refused frame takes nothing.
    pub fn check_n(&mut self, now: Instant, n: usize) -> Verdict {
        let cost = (n.max(1) as f64).min(self.capacity);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_are_absorbed_then_refused_then_closed() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(5);
        for _ in 0..50 {
            assert_eq!(g.check(t0), Verdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(g.check(t0), Verdict::Refuse);
        }
        assert_eq!(g.check(t0), Verdict::Close);
    }

    #[test]
    fn a_weighted_frame_takes_its_weight_or_nothing() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(10);
        assert_eq!(g.check_n(t0, 60), Verdict::Allow);
        assert_eq!(g.check_n(t0, 41), Verdict::Refuse, "40 left");
        assert_eq!(
            g.check_n(t0, 40),
            Verdict::Allow,
            "the refusal took nothing"
        );
        assert_eq!(g.check(t0), Verdict::Refuse);
        // Heavier than the whole burst: costs the burst, so it passes once the bucket is full.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(g.check_n(later, 1_000_000), Verdict::Allow);
    }

    #[test]
    fn tokens_come_back_at_the_sustained_rate() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(10);
        for _ in 0..100 {
            g.check(t0);
        }
        assert_eq!(g.check(t0), Verdict::Refuse);
        let later = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            assert_eq!(g.check(later), Verdict::Allow);
        }
        assert_eq!(g.check(later), Verdict::Refuse);
    }
}
