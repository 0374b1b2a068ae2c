//! What NEO's fault tests need beyond the programs themselves: hosts in
//! network namespaces whose network a test can hold or cut ([`hosts`]), a
//! cluster of our processes spread over them ([`cluster`]), and the record
//! of what load clients saw acknowledged with its check against every
//! replica ([`record`]); `neo-load` is the load client. [`sim`] runs a
//! whole cluster in one thread under faults drawn from a seed, and replays
//! a failing seed exactly.

pub mod cluster;
pub mod hosts;
pub mod record;
pub mod sim;
