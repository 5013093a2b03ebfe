//! buffered store.
