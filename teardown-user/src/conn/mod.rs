//! Connections: the records the kernel keeps, followed to their end in user
//! space ([`tracker`]).

pub mod resets;
pub mod tracker;
