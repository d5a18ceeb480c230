//! SYN-flood detection. The kernel counts SYNs, completed handshakes and
//! half-open flows per destination; every poll, [`watch`] has [`feed`] turn
//! those counts into a [`detector::Tick`] and the [`detector`] decides, per
//! destination and for all of them together, whether a flood is under way,
//! with the sources estimated by [`hll`] (how many) and [`heavy`] (which
//! ones); the [`events`] it returns are printed, and their states shown in
//! the metrics. The thresholds are in [`config`]. While an alert is
//! active, [`debris`] sums up its flood's one-sided records per target. The rule and its
//! reasoning: `docs/flood-detection.md`.

mod config;
mod debris;
mod detector;
mod events;
mod feed;
mod heavy;
mod hll;
mod target;
#[cfg(test)]
pub(crate) mod testing;
mod watch;

pub use config::{DetectConfig, SOURCE_CAPACITY};
pub use debris::{DebrisCounts, DebrisSummariser, DebrisSummary, FloodRecords};
pub use events::{AlertEvent, Phase};
/// For `cli_detect`'s test-only destination parser.
#[cfg(test)]
pub use target::{TargetKey, TargetParseError};
pub use watch::{AlertState, AlertSummary, AlertWatch};
