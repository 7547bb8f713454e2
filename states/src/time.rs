//! Time as a value: milliseconds since an epoch the runtime chooses.
//!
//! The machines never read a clock. The runtime passes `now` into every call
//! and arms one timer at the deadline the machine reports; a simulator passes
//! virtual time instead.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since an arbitrary epoch chosen by the
/// runtime (a monotonic clock's start, or 0 in a simulation).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The epoch itself.
    pub const ZERO: Millis = Millis(0);

    /// `self + delay_ms`, saturating at the end of time.
    pub fn after_ms(self, delay_ms: u64) -> Millis {
        Millis(self.0.saturating_add(delay_ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since_ms(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(5).after_ms(10), Millis(15));
        assert_eq!(Millis(u64::MAX).after_ms(1), Millis(u64::MAX));
        assert_eq!(Millis(15).since_ms(Millis(5)), 10);
        assert_eq!(Millis(5).since_ms(Millis(15)), 0);
        assert_eq!(Millis(61_005).to_string(), "61.005s");
    }
}
