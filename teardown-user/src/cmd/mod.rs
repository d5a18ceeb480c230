//! The subcommands: [`run`] (the live loop), [`replay`] (captures through the
//! XDP program), [`bench`](mod@bench) and its [`contention`] case, and
//! the [`manual`] (man pages, shell completions).

pub mod bench;
pub mod bench_peers;
pub mod contention;
pub mod manual;
pub mod replay;
pub mod run;
