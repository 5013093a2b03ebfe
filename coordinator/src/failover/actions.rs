//! Traits for the side effects of a failover.
