//! Test support for vault-dr's integration tests: the lab of real OpenBao processes (the
//! `vault-dr-lab` crate, re-exported as [`lab`]) and a real Prometheus server ([`prometheus`]). Every
//! process started here dies with its guard, also on panic; a missing binary is an error that
//! says to run `scripts/setup.sh`, never a skipped test.

pub mod prometheus;

pub use vault_dr_lab as lab;
pub mod agents;
pub mod coordinators;
pub mod fake_apiserver;
pub mod mongo;
pub mod netns;
pub mod tls;
