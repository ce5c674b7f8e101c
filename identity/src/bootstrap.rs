//! Bootstrap: the etcd writes that make the first cloud admin.
//!
//! `nubo-coordinator bootstrap --admin-password-file F` (to be wired) reads
//! F with [`password_from_file`], hashes it with
//! [`crate::Passwords::production`], makes a key with
//! [`crate::token::generate_key`], calls [`bootstrap`] and commits the
//! writes in ONE transaction: `when` = `Compare::create_revision(key, Equal,
//! 0)` for every write, `and_then` = a put of every write. If the compare
//! fails the cloud is already bootstrapped: report that and change nothing.

use nubo_common::model::{encode, Project, Quota, Role, RoleAssignment, Timestamp, User, UserName};
use nubo_common::{keys, ProjectId};

use crate::token::{new_key_set, KeyError, MIN_KEY_LEN};

/// The project created for the admin.
pub const ADMIN_PROJECT: &str = "admin";

/// One etcd put (create-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The JSON value.
    pub value: Vec<u8>,
}

/// Why bootstrap could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The password file holds no password.
    #[error("the admin password file is empty")]
    EmptyPassword,
    /// The password file has more than one line.
    #[error("the admin password file must hold one line, the password")]
    MultiLinePassword,
    /// The token key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An id did not validate (cannot happen with the built-in names).
    #[error(transparent)]
    Id(#[from] nubo_common::IdError),
}

/// The password in a password file's contents: one line, trailing newline
/// (LF or CRLF) removed, nothing else trimmed.
pub fn password_from_file(contents: &str) -> Result<&str, BootstrapError> {
    let p = contents
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(contents);
    if p.is_empty() {
        return Err(BootstrapError::EmptyPassword);
    }
    if p.contains('\n') {
        return Err(BootstrapError::MultiLinePassword);
    }
    Ok(p)
}

/// The writes for a fresh cloud: the `admin` project, the admin user with
/// `password_hash`, its cloud-wide `admin` role, the token signing key set
/// and the stored default quota ([`Quota::cloud_default`]).
pub fn bootstrap(
    admin: &UserName,
    password_hash: &str,
    token_key: &[u8],
    now: Timestamp,
) -> Result<Vec<Write>, BootstrapError> {
    if token_key.len() < MIN_KEY_LEN {
        return Err(KeyError::TooShort(token_key.len()).into());
    }
    let project = ProjectId::new(ADMIN_PROJECT)?;
    let w = |key: String, value: Vec<u8>| Write { key, value };
    Ok(vec![
        w(
            keys::project(&project),
            encode(&Project {
                id: project.clone(),
                name: ADMIN_PROJECT.to_string(),
                description: "cloud administration".to_string(),
                enabled: true,
                created_at: now,
            }),
        ),
        w(
            keys::user(admin),
            encode(&User {
                name: admin.clone(),
                password_hash: password_hash.to_string(),
                enabled: true,
                created_at: now,
            }),
        ),
        w(
            keys::role(admin, None),
            encode(&RoleAssignment {
                user: admin.clone(),
                project: None,
                role: Role::Admin,
            }),
        ),
        w(keys::token_key(), encode(&new_key_set(token_key, now))),
        w(keys::quota_default(), encode(&Quota::cloud_default())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::effective_roles;
    use crate::token::{Claims, TokenSigner};
    use crate::Passwords;
    use nubo_common::model::{decode, TokenKeySet};

    #[test]
    fn writes_make_a_working_admin() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let pw = Passwords::with_params(64, 1, 1).unwrap();
        let hash = pw.hash("s3cret").unwrap();
        let admin = UserName::new("admin").unwrap();
        let writes = bootstrap(&admin, &hash, &[5; 32], now).unwrap();
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/nubo/v1/private/projects/admin",
                "/nubo/v1/private/users/admin",
                "/nubo/v1/private/roles/admin/_cloud",
                "/nubo/v1/private/secrets/token-key",
                "/nubo/v1/private/quotas/_default",
            ]
        );
        let user: User = decode(&writes[1].key, &writes[1].value).unwrap();
        pw.verify("s3cret", &user.password_hash).unwrap();
        let role: RoleAssignment = decode(&writes[2].key, &writes[2].value).unwrap();
        let project: Project = decode(&writes[0].key, &writes[0].value).unwrap();
        assert!(project.enabled);
        assert_eq!(
            effective_roles(&[role], &admin, &project.id),
            vec![Role::Admin]
        );
        let set: TokenKeySet = decode(&writes[3].key, &writes[3].value).unwrap();
        let signer = TokenSigner::from_key_set(&set).unwrap();
        let c = Claims::new(admin, project.id, vec![Role::Admin], now, 60);
        assert!(signer.verify(&signer.sign(&c), now).is_ok());
        let q: Quota = decode(&writes[4].key, &writes[4].value).unwrap();
        assert_eq!(q, Quota::cloud_default());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let now = chrono::Utc::now();
        let admin = UserName::new("admin").unwrap();
        assert!(matches!(
            bootstrap(&admin, "h", &[1; 16], now),
            Err(BootstrapError::Key(KeyError::TooShort(16)))
        ));
        assert_eq!(password_from_file("pw\n").unwrap(), "pw");
        assert_eq!(password_from_file("pw\r\n").unwrap(), "pw");
        assert_eq!(password_from_file(" pw ").unwrap(), " pw ");
        assert!(matches!(
            password_from_file("\n"),
            Err(BootstrapError::EmptyPassword)
        ));
        assert!(matches!(
            password_from_file("a\nb\n"),
            Err(BootstrapError::MultiLinePassword)
        ));
    }
}
