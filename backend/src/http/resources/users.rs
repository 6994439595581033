//! Users and API keys: a user's password kept as a hash, Sensu's user actions (password,
//! reset, reinstate, groups) and `localselfuser`, API keys minted for a user.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use cairn_api::model::{ApiKey, User};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use super::endpoint::UserAction;
use super::{optional_str, write};
use crate::auth;
use crate::auth::rbac::{Caller, Verb};
use crate::http::{authorize, parse_json, read_body, ApiError, AppState};
use crate::store::Precondition;

/// Prepares a user or a Vault provider for storage (a provider sent without its token keeps
/// the stored one). For a user: a clear-text `password` becomes an argon2 hash; a
/// `password_hash` alone (Sensu's bcrypt from `sensuctl user hash-password`, or argon2) is
/// checked and kept as given, to be upgraded to argon2 at the user's next login; with neither,
/// the stored hash is kept, and a new user needs one of them.
pub(super) async fn prepare_user(
    state: &AppState,
    resource: &mut Resource,
) -> Result<(), ApiError> {
    if let Spec::VaultProvider(vault) = &mut resource.spec {
        // The API never returns a Vault provider's token, so a client that sends back what it
        // read sends none: the stored token is kept, as a user's stored hash is.
        if vault.client.token.is_empty() {
            if let Some(existing) = state
                .resources
                .get(Kind::VaultProvider, "", resource.metadata.name.as_str())
                .await?
            {
                if let Spec::VaultProvider(existing) = existing.resource.spec {
                    vault.client.token = existing.client.token;
                }
            }
        }
        return Ok(());
    }
    let Spec::User(user) = &mut resource.spec else {
        return Ok(());
    };
    if !user.password.is_empty() {
        user.password_hash = state.passwords.hash(&user.password).await?;
        user.password.clear();
    } else if !user.password_hash.is_empty() {
        auth::check_password_hash(&user.password_hash)
            .map_err(|message| ApiError::invalid(format!("password_hash: {message}")))?;
    } else if let Some(existing) = state.resources.get(Kind::User, "", &user.username).await? {
        if let Spec::User(existing) = existing.resource.spec {
            user.password_hash = existing.password_hash;
        }
    } else {
        return Err(ApiError::invalid(
            "password: a new user needs a password or a password_hash",
        ));
    }
    Ok(())
}

/// Sensu's pseudo-resource for a user's own record: `get` reads it and `update` changes its
/// password. The seeded `system:user` ClusterRole grants both to every local user (group
/// `system:users`).
const LOCAL_SELF_USER: &str = "localselfuser";

/// Authorizes `verb` on the user `name`: as `users`, or as `localselfuser` when the caller is
/// that user of this cluster (a federated caller of the same name is somebody else).
pub(super) fn authorize_user(
    state: &AppState,
    caller: &Caller,
    verb: Verb,
    name: &str,
) -> Result<(), ApiError> {
    if caller.is_local_user(name)
        && authorize(state, caller, verb, LOCAL_SELF_USER, None, Some(name)).is_ok()
    {
        return Ok(());
    }
    authorize(state, caller, verb, Kind::User.plural(), None, Some(name))
}

/// A user action: 201 for a `PUT` one, 204 for a `DELETE` one, as Sensu answers them.
pub(super) async fn users_action(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: UserAction,
    body: Body,
) -> Result<Response, ApiError> {
    // Users may change their own password (`update localselfuser`, which the seeded
    // `system:user` role grants); everything else needs `update users`. Authorized before the
    // lookup, so that a refused caller cannot tell which users exist.
    if action == UserAction::ChangePassword {
        authorize_user(state, caller, Verb::Update, name)?;
    } else {
        authorize(state, caller, Verb::Update, "users", None, Some(name))?;
    }
    let stored = state
        .resources
        .get(Kind::User, "", name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user \"{name}\" not found")))?;
    let Spec::User(mut user) = stored.resource.spec.clone() else {
        return Err(ApiError::internal("a user key holds another kind"));
    };
    // As Sensu answers an action without a body: 201 for a PUT, 204 for a DELETE.
    let answer = if action.is_removal() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    };
    match &action {
        UserAction::ChangePassword | UserAction::ResetPassword => {
            let bytes = read_body(state, body).await?;
            let body = parse_json(&bytes)?;
            if let Some(named) = optional_str(&body, "username")? {
                if named != name {
                    return Err(ApiError::invalid(format!(
                        "username: \"{named}\" does not match the user of the URI ({name})"
                    )));
                }
            }
            // As in Sensu: `password` changes a password and needs the current one in
            // `password`, whoever asks (so a stolen token or API key alone cannot change it);
            // `reset_password` is an administrator's (`update users`) and needs only the new
            // one. The new one comes in clear (`password_new`, the web UI's way) or as a hash
            // (`password_hash`, what sensuctl 6 sends after hashing it with bcrypt).
            if action == UserAction::ChangePassword {
                let current = optional_str(&body, "password")?.ok_or_else(|| {
                    ApiError::invalid(
                        "password: the current password is required to change a password \
                         (an administrator sets another user's with reset_password)",
                    )
                })?;
                if !state.passwords.verify(current, &user.password_hash).await? {
                    return Err(ApiError::invalid(
                        "password: does not match the current password",
                    ));
                }
            }
            let new_password = optional_str(&body, "password_new")?;
            let new_hash = optional_str(&body, "password_hash")?;
            user.password_hash =
                match (new_password, new_hash) {
                    (Some(new_password), None) => {
                        if new_password.chars().count() < 8 {
                            return Err(ApiError::invalid(
                                "password_new: must be at least 8 characters",
                            ));
                        }
                        state.passwords.hash(new_password).await?
                    }
                    (None, Some(new_hash)) => {
                        auth::check_password_hash(new_hash).map_err(|message| {
                            ApiError::invalid(format!("password_hash: {message}"))
                        })?;
                        new_hash.to_owned()
                    }
                    (Some(_), Some(_)) => return Err(ApiError::invalid(
                        "password_new and password_hash: give the new password one way, not both",
                    )),
                    (None, None) => return Err(ApiError::invalid(
                        "password_hash: missing; the new password is required, as password_hash \
                         (bcrypt, from `sensuctl user hash-password`) or password_new (clear text)",
                    )),
                };
        }
        UserAction::Reinstate => user.disabled = false,
        UserAction::AddGroup(group) => {
            if !user.groups.iter().any(|existing| existing == group) {
                user.groups.push(group.clone());
            }
        }
        UserAction::RemoveGroup(group) => user.groups.retain(|existing| existing != group),
        UserAction::RemoveAllGroups => user.groups.clear(),
    }
    let resource = Resource::new(
        stored.resource.metadata.clone(),
        Spec::User(User { ..user }),
    );
    write(state, &resource, Precondition::Revision(stored.revision)).await?;
    Ok(answer.into_response())
}

pub(super) async fn apikeys_create(
    state: &AppState,
    caller: &Caller,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::Create,
        Kind::ApiKey.plural(),
        None,
        None,
    )?;
    let bytes = read_body(state, body).await?;
    let body = parse_json(&bytes)?;
    let username = body
        .get("username")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("username: missing field \"username\""))?;
    if state.auth.snapshot().user(username).is_none() {
        return Err(ApiError::not_found(format!(
            "user \"{username}\" not found"
        )));
    }
    let key = auth::new_uuid();
    let mut metadata = ObjectMeta::named("", &key);
    metadata.created_by = caller.username.clone();
    let resource = Resource::new(
        metadata,
        Spec::ApiKey(ApiKey {
            metadata: None,
            username: username.to_owned(),
            created_at: crate::clock::unix_now(),
        }),
    );
    write(state, &resource, Precondition::Absent).await?;
    let location = format!("/api/core/v2/apikeys/{key}");
    let mut response = StatusCode::CREATED.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a UUID path is a valid header"),
    );
    Ok(response)
}
