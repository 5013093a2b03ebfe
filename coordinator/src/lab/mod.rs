//! The local lab: real OpenBao (and helper) processes on loopback, for `vault-dr drill`,
//! `vault-dr bench` and the integration tests.
