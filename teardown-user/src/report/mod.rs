//! What `teardown run` shows: one [`figures::Figures`] value per tick, and
//! its views, each a pure function of it: [`plain`] lines, [`json`] lines,
//! the [`dashboard`] and the [`prometheus`] exposition, served by
//! [`metrics_server`]; [`ipfix`] sends the connection records to a flow
//! collector, and [`hook`] runs `--on-alert` commands. [`output`] writes lines without letting a failing
//! output stop the watch.

pub mod dashboard;
pub mod figures;
pub mod hook;
pub mod ipfix;
pub mod json;
pub mod metrics_server;
pub mod output;
pub mod plain;
pub mod process;
pub mod prometheus;
