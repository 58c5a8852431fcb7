//! Restart policy for resident workers: exponential backoff and crash-loop
//! detection over a time window. Time comes in as an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Doubling delays from `min` to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }
    /// The delay before the next try; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Counts exits within a sliding window: `limit` exits within `window`
/// make a crash loop.
#[derive(Clone, Debug)]
pub struct CrashWindow {
    limit: usize,
    window: Duration,
    exits: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        CrashWindow {
            limit: limit.max(1) as usize,
            window,
            exits: VecDeque::new(),
        }
    }
    /// Records an exit at `now`; true when that makes a crash loop.
    pub fn record(&mut self, now: Instant) -> bool {
        self.exits.push_back(now);
        while let Some(&first) = self.exits.front() {
            if now.duration_since(first) > self.window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        self.exits.len() >= self.limit
    }
    pub fn clear(&mut self) {
        self.exits.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn crash_loops_are_counted_in_a_window() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(3, Duration::from_secs(10));
        assert!(!w.record(t0));
        assert!(!w.record(t0 + Duration::from_secs(1)));
        assert!(
            !w.record(t0 + Duration::from_secs(20)),
            "old exits fall out of the window"
        );
        assert!(!w.record(t0 + Duration::from_secs(21)));
        assert!(w.record(t0 + Duration::from_secs(22)));
    }
}
