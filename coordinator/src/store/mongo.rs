//! mongo store.
