//! NEO's command-line programs: the options and configuration file of the
//! daemons (`neomaster`, `neostorage`, `neoadmin`), the control tool
//! `neoctl` (operations.md §1–§3), and the tools `neolog` and
//! `neomigrate`.
//!
//! Everything that decides — option merging, the command language, output
//! formats — is plain functions tested without I/O; the binaries only print
//! what these return.

pub mod conf;
pub mod daemon;
pub mod monitoring;
pub mod neoctl;
pub mod neolog;
pub mod neomigrate;
pub mod options;
pub mod simple;
pub mod timestamp;
mod tool;
