//! vault-dr's integration tests against the real components (OpenBao, SecantusDB, helm,
//! kubectl, network namespaces, the fake apiserver or a real cluster), as one test binary: one
//! link instead of one per file, and libtest runs the tests of every file in one pool (two at a
//! time on two cores) instead of file after file. Each module is one subject; run one with its
//! path, e.g. `cargo test -p vault-dr-tests --test integration faults_netns:: -- --nocapture`.
//!
//! Every module that starts a DR group builds it with the one harness
//! (`vault_dr_lab::harness::Group::builder()`, and its `.ha(..)` form in
//! `vault_dr_tests::coordinators`).

mod agent_openbao;
mod agent_prometheus;
mod coordinator_openbao;
mod coordinator_tls;
mod drill;
mod faults_netns;
mod fence;
mod fuzz_parsers;
mod group_stamp;
mod ha_kubernetes;
mod ha_local;
mod ha_split_brain;
mod helm_chart;
mod host_figures;
mod hostile_input;
mod images;
mod k8s_coordination;
mod k8s_traffic;
mod lab_openbao;
mod operator_errors;
mod pause;
mod raft_replication;
mod replication_agent;
mod replication_openbao;
mod restore_ahead;
mod secret_hygiene;
mod store_mongo;
mod write_gate;
