//! SYN-flood detection: the detector ([`detector`]), the reading of the
//! kernel's per-destination counts that feeds it ([`feed`]) and the run
//! loop's watch over its alerts ([`watch`]). The rule and its reasoning are
//! in `docs/flood-detection.md`.

mod detector;
mod feed;
mod watch;

pub use detector::{AlertEvent, DetectArgs, DetectConfig};
pub use watch::{AlertState, AlertWatch};
