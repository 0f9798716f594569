//! A pod's slow-path budget: what one pod's frames may cost the worker
//! beyond the flow cache, so that a flood costs the flooding pod and not
//! its neighbours.
//!
//! The charge is a frame the flow cache did not answer, except one of a
//! connection already tracked: new connections, denied frames, spoofed,
//! malformed and untracked ones, neighbour requests. A server's first
//! answer to each new connection (a SYN-ACK, a DNS reply) is not charged:
//! the client paid for that connection.
//!
//! A token bucket per pod port: `rate` tokens a second, up to a burst of a
//! tenth of a second's worth (at least a batch). A port is read for no
//! more frames than it holds tokens (one at least), and a batch is charged
//! after it was processed, so a port may run into debt by up to one batch
//! of frames it did not pay for; while it is in debt the worker does not
//! read the port at all (the event loop stops watching its descriptor),
//! for at least [`MIN_PAUSE`]. A flood is thus taken a few frames at a
//! time, about once a millisecond, not a batch at once. Its frames
//! wait in the TAP's queue meanwhile, and when that is full the pod's own
//! kernel drops them (the pod's interface counts them as TX drops): the
//! flood costs the flooder, the switch spends on it no more than the rate,
//! and it is woken for it a few hundred times a second, not once a frame.
//! Frames of the pod's established connections wait with the rest: a pod
//! that floods slows itself.

use std::time::{Duration, Instant};

use crate::Datapath;

/// The shortest pause: a port in debt is not polled again within it (each
/// pause costs a wakeup; the tokens keep accruing meanwhile).
pub const MIN_PAUSE: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Tokens left (negative: debt).
    tokens: f64,
    /// When `tokens` was last brought up to date; None: never charged
    /// (a full bucket).
    last: Option<Instant>,
    /// Paused until then.
    until: Option<Instant>,
    /// Times the port was paused.
    pub pauses: u64,
}

impl Budget {
    /// The most tokens a port holds for `rate` a second.
    pub fn burst(rate: u32) -> f64 {
        (rate as f64 / 10.0).max(Datapath::BATCH as f64)
    }

    /// Whether the port may be read now; ends a pause that is over.
    pub fn may_read(&mut self, now: Instant) -> bool {
        match self.until {
            Some(t) if now < t => false,
            _ => {
                self.until = None;
                true
            }
        }
    }

    /// The whole tokens the port holds at `now` (none while in debt).
    pub fn available(&self, rate: u32, now: Instant) -> usize {
        self.tokens_at(rate, now).max(0.0) as usize
    }

    fn tokens_at(&self, rate: u32, now: Instant) -> f64 {
        let burst = Self::burst(rate);
        let accrued = self.last.map_or(burst, |t| {
            now.saturating_duration_since(t).as_secs_f64() * rate.max(1) as f64
        });
        (self.tokens + accrued).min(burst)
    }

    /// Charges `n` frames at `rate` a second; pauses the port if that puts
    /// it in debt.
    pub fn charge(&mut self, rate: u32, n: usize, now: Instant) {
        self.tokens = self.tokens_at(rate, now) - n as f64;
        self.last = Some(now);
        let rate = rate.max(1) as f64;
        if self.tokens < 0.0 {
            let debt = Duration::from_secs_f64(-self.tokens / rate);
            self.until = Some(now + debt.max(MIN_PAUSE));
            self.pauses += 1;
        }
    }

    /// When a paused port may be read again.
    pub fn resumes_at(&self) -> Option<Instant> {
        self.until
    }

    /// Whether the port is paused at `now`.
    pub fn paused(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_free_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = Budget::default();
        // rate 1000/s: a burst of 100 (a tenth of a second)
        b.charge(1000, 100, t0);
        assert!(b.may_read(t0), "exactly the burst: no debt");
        b.charge(1000, 50, t0);
        assert!(!b.may_read(t0), "50 beyond the burst: paused");
        assert_eq!(b.pauses, 1);
        // 50 tokens of debt at 1000/s: 50 ms
        assert_eq!(b.resumes_at(), Some(t0 + Duration::from_millis(50)));
        assert!(!b.may_read(t0 + Duration::from_millis(49)));
        assert!(b.may_read(t0 + Duration::from_millis(50)));
        // over one second at the rate: frames = the rate, no pause
        let mut t = t0 + Duration::from_millis(50);
        for _ in 0..100 {
            t += Duration::from_millis(10);
            b.charge(1000, 10, t);
            assert!(b.may_read(t), "10 frames per 10 ms is the rate");
        }
        assert_eq!(b.pauses, 1);
    }

    #[test]
    fn a_small_debt_pauses_for_the_minimum() {
        let t0 = Instant::now();
        let mut b = Budget::default();
        b.charge(100_000, 10_001, t0);
        assert_eq!(b.resumes_at(), Some(t0 + MIN_PAUSE));
        assert!(b.paused(t0) && !b.paused(t0 + MIN_PAUSE));
        // back from the pause: 1 ms at 100,000/s is 100 tokens, less the
        // debt of one
        assert_eq!(b.available(100_000, t0 + MIN_PAUSE), 99);
    }

    #[test]
    fn tokens_accrue_up_to_the_burst_only() {
        let t0 = Instant::now();
        let mut b = Budget::default();
        b.charge(1000, 0, t0);
        // an hour idle still leaves one burst (100), not 3.6 million
        let t1 = t0 + Duration::from_secs(3600);
        b.charge(1000, 101, t1);
        assert!(b.paused(t1));
        // a low rate still allows a batch at once
        assert_eq!(Budget::burst(10), Datapath::BATCH as f64);
    }
}
