//! ZODB records are pickles; this crate reads the persistent references in
//! them without Python, for the client (which oids a commit references) and
//! the Importer (moving the oids of merged databases).

mod references;

pub use references::{references, rewrite_references, NewReference};
