//! The subcommands: [`run`] (the live loop), [`replay`] (captures through the
//! XDP program), [`bench`](mod@bench) and its [`contention`] case.

pub mod bench;
pub mod contention;
pub mod replay;
pub mod run;
