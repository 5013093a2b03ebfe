# vault-dr: least-privilege policy of the DR token.
#
# The same token id exists in every cluster of a DR group (created by root with
# `auth/token/create id=<fixed> policies=vault-dr`), so it keeps working after a snapshot
# restore replaces a cluster's token store with the primary's. Agents and coordinators use it;
# nothing here needs root. Every path below was checked against OpenBao 2.7.2: an agent with
# only this policy pulls, restores, quarantines and promotes (tests/tests/replication_agent.rs).

# Agent (secondary): pull a raft snapshot from the primary (GET, no sudo needed), and restore
# one into the local node (POST needs sudo). The clusters of a group share one seal, so the
# verified restore works; snapshot-force is for an operator recovering into a node with other
# keys (the agent never forces: a forced restore with foreign keys seals the node).
path "sys/storage/raft/snapshot" {
  capabilities = ["read", "update", "sudo"]
}
path "sys/storage/raft/snapshot-force" {
  capabilities = ["update", "sudo"]
}

# Agent: wait for a restore to finish (a token request blocks until it has).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
# Agent: keep the periodic token alive.
path "auth/token/renew-self" {
  capabilities = ["update"]
}
# Coordinator: the fence token. A failover seals the old primary with a child of this token
# that expires 2 s after it is made (never with this token itself), so a seal queued in a
# frozen node's socket is refused when the node wakes. A child token carries a subset of this
# token's policies: no privilege is gained.
path "auth/token/create" {
  capabilities = ["update"]
}

# Agent (promotion target): the canary write and read after promotion.
path "cubbyhole/vault-dr-canary" {
  capabilities = ["create", "read", "update"]
}
# Coordinator: its own canary.
path "cubbyhole/vault-dr/canary" {
  capabilities = ["create", "read", "update"]
}
# Coordinator: the group stamp (one coordinator group per set of clusters): written into the
# primary, carried to the secondaries by the snapshots, read from every cluster.
path "cubbyhole/vault-dr/group" {
  capabilities = ["create", "read", "update"]
}

# Agent (raft backend, synchronous layout): a DR voter that won a raft election hands the
# leadership back (the active node belongs in the primary cluster).
path "sys/step-down" {
  capabilities = ["update", "sudo"]
}
# Agent (raft backend): a node that should vote but that the raft keeps a non-voter (it was a
# permanent non-voter before its data was quarantined) asks for its promotion.
path "sys/storage/raft/promote" {
  capabilities = ["update", "sudo"]
}
# Coordinator (raft backend): a planned switchover inside one raft makes the target's nodes
# its voters (promote, above), the others non-voters, and steps the leader down (above).
path "sys/storage/raft/demote" {
  capabilities = ["update", "sudo"]
}

# Agent probes: raft indices and autopilot health.
path "sys/leader" {
  capabilities = ["read"]
}
path "sys/storage/raft/autopilot/state" {
  capabilities = ["read"]
}
path "sys/storage/raft/configuration" {
  capabilities = ["read"]
}
path "sys/health" {
  capabilities = ["read"]
}
path "sys/metrics" {
  capabilities = ["read"]
}

# Agent probes: replication status (Vault Enterprise; OpenBao answers 404, which is mode none,
# but only when the policy lets the request reach the router: without these it is a 403).
path "sys/replication/dr/status" {
  capabilities = ["read"]
}
path "sys/replication/performance/status" {
  capabilities = ["read"]
}

# Coordinator: fence an unreachable-then-returning old primary in an unplanned failover.
path "sys/seal" {
  capabilities = ["update", "sudo"]
}

# Drill: its probe secrets, and nothing else of the KV store.
path "secret/data/vault-dr/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/vault-dr/*" {
  capabilities = ["read"]
}
