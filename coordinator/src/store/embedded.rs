//! embedded store.
