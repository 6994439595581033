//! Every prefix of the store's keyspace, in one place: what the backend persists and under
//! which key. No prefix starts another unless it nests inside it (`coord/…`), so a list or a
//! watch of one part never sees another's keys. With etcd all of it sits under the operator's
//! `--etcd-prefix` (default `/cairn/`), which the etcd store adds and strips.

/// Resources: `res/<plural>/<namespace>/<name>` (namespaced kinds) or `res/<plural>/<name>`
/// (cluster-wide kinds), the wrapped JSON document ([`crate::store::resources`]).
pub const RESOURCES: &str = "res/";

/// Refresh tokens: `auth/refresh/<sha-256 of the token>` (never the token itself).
pub const REFRESH_TOKENS: &str = "auth/refresh/";

/// Agent join tokens: `agents/jointokens/<id>` (the secret's hash, never the secret).
pub const JOIN_TOKENS: &str = "agents/jointokens/";

/// Agent certificate records: `agents/certs/<namespace>/<name>`.
pub const AGENT_CERTS: &str = "agents/certs/";

/// Agent revocations: `agents/revoked/<namespace>/<name>`.
pub const AGENT_REVOCATIONS: &str = "agents/revoked/";

/// Replicator status and resume revision: `federation/replicators/<name>`.
pub const REPLICATOR_STATUS: &str = "federation/replicators/";

/// GitOps sync records: `gitops/syncs/<id>`, the id time-ordered; the newest 100 are kept
/// ([`crate::http`]'s `syncs.rs`).
pub const GITOPS_SYNCS: &str = "gitops/syncs/";

/// Sensu's Tessen opt-out (one key).
pub const TESSEN: &str = "config/tessen";

/// Everything coordination keeps (the three below).
pub const COORD: &str = "coord/";
/// Coordination's member keys: `coord/members/<backend id>`.
pub const COORD_MEMBERS: &str = "coord/members/";
/// Coordination's presence keys: `coord/presence/<namespace>/<entity>`.
pub const COORD_PRESENCE: &str = "coord/presence/";
/// Coordination's leader keys: `coord/leaders/<role>`.
pub const COORD_LEADERS: &str = "coord/leaders/";

/// The top-level parts of the keyspace.
pub const TOP_LEVEL: [&str; 8] = [
    RESOURCES,
    REFRESH_TOKENS,
    JOIN_TOKENS,
    AGENT_CERTS,
    AGENT_REVOCATIONS,
    REPLICATOR_STATUS,
    GITOPS_SYNCS,
    COORD,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_part_of_the_keyspace_reaches_into_another() {
        let mut parts = TOP_LEVEL.to_vec();
        parts.push(TESSEN);
        for (i, a) in parts.iter().enumerate() {
            for (j, b) in parts.iter().enumerate() {
                assert!(i == j || !b.starts_with(a), "{a:?} is a prefix of {b:?}");
            }
        }
        for nested in [COORD_MEMBERS, COORD_PRESENCE, COORD_LEADERS] {
            assert!(nested.starts_with(COORD), "{nested}");
        }
        for prefix in TOP_LEVEL {
            assert!(
                prefix.ends_with('/'),
                "{prefix} must end with / to be a prefix"
            );
        }
    }
}
