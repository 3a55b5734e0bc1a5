//! Flood control for one connection: a token bucket over the frames a client initiates (sends,
//! pings and WebSocket ping/pong frames, refreshes, acks of nothing waiting for them, refused
//! frames), and the rule for when refusing becomes closing: a second's worth of refusals (at
//! the sustained rate) without the client holding back for a second in between.

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
    /// Frames refused since the client last had a second's worth of the rate in hand.
    strikes: u32,
    /// Refusals that end the connection: one second's worth of the sustained rate.
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
        // Forgiven only once the client has held back long enough to have a second's worth in
        // hand again. Forgiving at every frame allowed would let a steady flood live for ever:
        // at twice the rate every other frame passes (a token comes back every 1/rate s), and
        // the refusals in between never add up; only floods of about rate^2 frames a second
        // were ever closed.
        if self.tokens >= self.rate {
            self.strikes = 0;
        }
        if self.tokens >= cost {
            self.tokens -= cost;
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

    /// `per_second` frames a second for `secs` seconds after `start`, evenly spaced; the verdicts.
    fn paced(g: &mut FloodGuard, start: Instant, per_second: u32, secs: u32) -> Vec<Verdict> {
        let gap = Duration::from_secs(1) / per_second;
        (1..=per_second * secs)
            .map(|i| g.check(start + gap * i))
            .collect()
    }

    fn count(verdicts: &[Verdict], which: Verdict) -> usize {
        verdicts.iter().filter(|v| **v == which).count()
    }

    #[test]
    fn a_steady_flood_at_twice_the_rate_is_closed_within_about_a_second() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(20);
        for _ in 0..200 {
            assert_eq!(g.check(t0), Verdict::Allow, "the burst");
        }
        let verdicts = paced(&mut g, t0, 40, 3);
        let closed_at = verdicts
            .iter()
            .position(|v| *v == Verdict::Close)
            .expect("closed");
        // 20 refusals are tolerated; at 40 frames a second about half pass.
        assert!(
            (38..=48).contains(&closed_at),
            "closed at frame {closed_at}, not about 1 s in"
        );
        assert!(verdicts[..closed_at].contains(&Verdict::Allow));
    }

    #[test]
    fn a_client_at_its_rate_is_never_closed_and_one_that_holds_back_is_forgiven() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(20);
        for _ in 0..200 {
            g.check(t0);
        }
        // At the sustained rate (after the burst is spent), for a minute: nothing refused.
        let steady = paced(&mut g, t0, 20, 60);
        assert_eq!(count(&steady, Verdict::Allow), steady.len());
        // Over it for a moment: refused, not closed ...
        let t1 = t0 + Duration::from_secs(60);
        let over: Vec<Verdict> = (0..15).map(|_| g.check(t1)).collect();
        assert!(over.contains(&Verdict::Refuse));
        assert_eq!(count(&over, Verdict::Close), 0);
        // ... and after a second of quiet the refusals so far are forgiven: 20 more are
        // tolerated again before a close.
        let t2 = t1 + Duration::from_millis(1100);
        let again: Vec<Verdict> = (0..(22 + 20)).map(|_| g.check(t2)).collect();
        assert_eq!(count(&again, Verdict::Allow), 22);
        assert_eq!(count(&again, Verdict::Refuse), 20);
        assert_eq!(g.check(t2), Verdict::Close);
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
