//! The storage node and its backends.

pub mod backend;
