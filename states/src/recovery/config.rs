//! The recovery machine's parameters: which WAL sources exist, the
//! timeline to follow, and every retry interval and bound.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lsn::{TimelineId, WalSegSize};

/// `recovery_target_timeline`: which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetTimeline {
    /// Follow the newest timeline found in the archive, in `wal/` or
    /// announced by the upstream (PostgreSQL's default since 12).
    Latest,
    /// Stay on the timeline recovery started on.
    Current,
    /// Recover along the history of this timeline.
    Id(TimelineId),
}

/// The static parameters of one recovery run (PostgreSQL names where they
/// exist). Built by the runtime from `walrep.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryConfig {
    /// Size of every WAL segment; segment numbers and stream start points
    /// (rounded down to a segment start, as PostgreSQL's walreceiver asks)
    /// are computed with it.
    pub wal_segment_size: WalSegSize,
    /// `restore_command` is set: the archive is a WAL source. Without it
    /// every archive step is skipped (PostgreSQL: restore fails at once).
    pub archive_configured: bool,
    /// `primary_conninfo` is set: the stream is a WAL source. Without it a
    /// round that finds nothing just waits for the retry interval.
    pub stream_configured: bool,
    /// `recovery_target_timeline`.
    pub target_timeline: TargetTimeline,
    /// `wal_retrieve_retry_interval`: the shortest time between two rounds
    /// over the sources after all of them failed.
    pub wal_retrieve_retry_interval_ms: u64,
    /// Cap of the exponential back-off after `restore_command` failures and
    /// after an archive/stream ping-pong on an invalid record.
    pub retry_backoff_max_ms: u64,
    /// How long a starting walreceiver may take to connect before it is
    /// stopped and the archive is tried again (PostgreSQL's
    /// WALRCV_STARTUP_TIMEOUT is 10 s).
    pub wal_receiver_connect_timeout_ms: u64,
    /// How many times the record at one LSN may be found invalid (from any
    /// source) before recovery calls it a ping-pong, reports it and backs off.
    pub ping_pong_threshold: u32,
    /// How long promotion waits for the walreceiver to report it stopped
    /// before asking again.
    pub receiver_stop_timeout_ms: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            wal_segment_size: WalSegSize::DEFAULT,
            archive_configured: true,
            stream_configured: true,
            target_timeline: TargetTimeline::Latest,
            wal_retrieve_retry_interval_ms: 5_000,
            retry_backoff_max_ms: 60_000,
            wal_receiver_connect_timeout_ms: 10_000,
            ping_pong_threshold: 4,
            receiver_stop_timeout_ms: 10_000,
        }
    }
}

/// A parameter combination recovery cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// An interval that must be positive is zero.
    ZeroInterval {
        /// The parameter.
        name: &'static str,
    },
    /// The back-off cap is below the retry interval it multiplies.
    BackoffCapBelowInterval {
        /// The cap.
        cap_ms: u64,
        /// The retry interval.
        interval_ms: u64,
    },
    /// A ping-pong needs at least two failures at the same LSN.
    PingPongThresholdTooLow {
        /// The threshold given.
        threshold: u32,
    },
    /// Timeline 0 does not exist.
    TimelineZero,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroInterval { name } => write!(f, "{name} must be greater than 0"),
            ConfigError::BackoffCapBelowInterval {
                cap_ms,
                interval_ms,
            } => write!(
                f,
                "retry back-off cap {cap_ms}ms is below wal_retrieve_retry_interval {interval_ms}ms"
            ),
            ConfigError::PingPongThresholdTooLow { threshold } => {
                write!(f, "ping-pong threshold {threshold} must be at least 2")
            }
            ConfigError::TimelineZero => write!(f, "recovery_target_timeline 0 does not exist"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl RecoveryConfig {
    /// Check the relationships between the parameters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            (
                "wal_retrieve_retry_interval",
                self.wal_retrieve_retry_interval_ms,
            ),
            (
                "wal_receiver_connect_timeout",
                self.wal_receiver_connect_timeout_ms,
            ),
            ("receiver_stop_timeout", self.receiver_stop_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroInterval { name });
            }
        }
        if self.retry_backoff_max_ms < self.wal_retrieve_retry_interval_ms {
            return Err(ConfigError::BackoffCapBelowInterval {
                cap_ms: self.retry_backoff_max_ms,
                interval_ms: self.wal_retrieve_retry_interval_ms,
            });
        }
        if self.ping_pong_threshold < 2 {
            return Err(ConfigError::PingPongThresholdTooLow {
                threshold: self.ping_pong_threshold,
            });
        }
        if self.target_timeline == TargetTimeline::Id(TimelineId(0)) {
            return Err(ConfigError::TimelineZero);
        }
        Ok(())
    }

    /// The wait before the next round after `failures` consecutive failures
    /// (restore_command failures or invalid records at one LSN): the retry
    /// interval doubled per failure beyond the first, capped.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(20);
        self.wal_retrieve_retry_interval_ms
            .saturating_mul(1 << doublings)
            .min(self.retry_backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let c = RecoveryConfig::default();
        assert_eq!(c.backoff_ms(0), 5_000);
        assert_eq!(c.backoff_ms(1), 5_000);
        assert_eq!(c.backoff_ms(2), 10_000);
        assert_eq!(c.backoff_ms(4), 40_000);
        assert_eq!(c.backoff_ms(5), 60_000);
        assert_eq!(c.backoff_ms(u32::MAX), 60_000);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = RecoveryConfig {
            wal_retrieve_retry_interval_ms: 0,
            ..RecoveryConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroInterval {
                name: "wal_retrieve_retry_interval"
            })
        );
        c.wal_retrieve_retry_interval_ms = 90_000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BackoffCapBelowInterval { .. })
        ));
        c.wal_retrieve_retry_interval_ms = 5_000;
        c.ping_pong_threshold = 1;
        assert!(c.validate().unwrap_err().to_string().contains("at least 2"));
        c.ping_pong_threshold = 4;
        assert_eq!(c.validate(), Ok(()));
    }
}
