//! `core/v2` access control types: roles, bindings, users and API keys.

use serde::{Deserialize, Serialize};

use super::form;
use crate::meta::ObjectMeta;

/// One rule of a role: which verbs on which resources (and optionally which names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// `get`, `list`, `create`, `update`, `delete` or `*`.
    #[serde(serialize_with = "form::null_when_empty")]
    pub verbs: Vec<String>,
    /// RBAC resource names (`checks`, …) or `*`.
    #[serde(serialize_with = "form::null_when_empty")]
    pub resources: Vec<String>,
    /// Names the rule is limited to; empty means all.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub resource_names: Vec<String>,
}

/// `core/v2` `Role` and `ClusterRole`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Role {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// At least one rule.
    #[serde(serialize_with = "form::null_when_empty")]
    pub rules: Vec<Rule>,
}

/// The role a binding grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleRef {
    /// `Role` or `ClusterRole` (title-cased on validation).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The role's name.
    pub name: String,
}

/// Who a binding grants to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subject {
    /// `User` or `Group`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The user or group name.
    pub name: String,
}

/// `core/v2` `RoleBinding` and `ClusterRoleBinding`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleBinding {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The role granted.
    pub role_ref: RoleRef,
    /// At least one subject.
    #[serde(serialize_with = "form::null_when_empty")]
    pub subjects: Vec<Subject>,
}

/// `core/v2` `User`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Lower-case name.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub username: String,
    /// Write-only clear-text password (at least 8 characters); never returned.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Password hash (argon2); the API never returns it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
    /// Groups, which RBAC bindings name.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub groups: Vec<String>,
    /// A disabled user can no longer authenticate.
    pub disabled: bool,
}

/// `core/v2` `APIKey`: `metadata.name` is the key itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKey {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The user the key acts as.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub username: String,
    /// Unix time of creation.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub created_at: i64,
}
