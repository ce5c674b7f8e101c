//! Password hashing with argon2id.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`)
//! stored in `User::password_hash`. They carry their own parameters, so
//! raising the cost later only affects new hashes; old ones still verify.
//!
//! Production parameters ([`Passwords::production`]) are OWASP's argon2id
//! recommendation: 19 MiB of memory, 2 passes, 1 lane. On this project's
//! (loaded) 2-core test machine one hash takes about 70–130 ms with the dev
//! profile (dependencies at opt-level 1) and should be around 50 ms in a
//! release build: slow enough to make offline guessing expensive, fast
//! enough for a login. Run verification in `spawn_blocking`.
//! Tests use [`Passwords::with_params`] with a few KiB.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// Longest password accepted (hashing is costly; bound the input).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why hashing or verification failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password does not match the hash.
    #[error("the password is wrong")]
    Mismatch,
    /// Empty passwords are refused.
    #[error("the password must not be empty")]
    Empty,
    /// Longer than [`MAX_PASSWORD_LEN`] bytes.
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    /// The stored hash is not an argon2 PHC string (e.g. edited by hand).
    #[error("the stored password hash is not a valid argon2 PHC string: {0}")]
    MalformedHash(String),
    /// The argon2 parameters are out of range.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed inside argon2.
    #[error("hashing the password failed: {0}")]
    Hash(String),
}

/// Hashes and verifies passwords with fixed argon2id parameters.
#[derive(Debug, Clone)]
pub struct Passwords {
    params: Params,
}

impl Passwords {
    /// Production cost: m = 19 MiB, t = 2, p = 1 (see the module docs).
    pub fn production() -> Self {
        Self {
            params: Params::DEFAULT,
        }
    }

    /// Custom cost: `m_kib` KiB of memory (at least 8 × `lanes`), `passes`
    /// iterations, `lanes` parallel lanes. Tests use e.g. `(64, 1, 1)`.
    pub fn with_params(m_kib: u32, passes: u32, lanes: u32) -> Result<Self, PasswordError> {
        let params = Params::new(m_kib, passes, lanes, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes `password` with a fresh random 16-byte salt; returns the PHC
    /// string to store.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        check_len(password)?;
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
        let hash = self
            .argon2()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Checks `password` against a stored PHC string (using the parameters
    /// recorded in it; the comparison is constant-time).
    pub fn verify(&self, password: &str, phc: &str) -> Result<(), PasswordError> {
        check_len(password)?;
        let parsed =
            PasswordHash::new(phc).map_err(|e| PasswordError::MalformedHash(e.to_string()))?;
        match self.argon2().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(()),
            Err(argon2::password_hash::Error::Password) => Err(PasswordError::Mismatch),
            Err(e) => Err(PasswordError::MalformedHash(e.to_string())),
        }
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::production()
    }
}

fn check_len(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn light() -> Passwords {
        Passwords::with_params(64, 1, 1).unwrap()
    }

    #[test]
    fn hash_verifies_and_wrong_password_does_not() {
        let p = light();
        let h = p.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        p.verify("correct horse", &h).unwrap();
        assert!(matches!(
            p.verify("correct horse!", &h),
            Err(PasswordError::Mismatch)
        ));
        assert!(matches!(p.verify("", &h), Err(PasswordError::Empty)));
    }

    #[test]
    fn salts_are_random() {
        let p = light();
        assert_ne!(p.hash("pw").unwrap(), p.hash("pw").unwrap());
    }

    #[test]
    fn hashes_carry_their_parameters() {
        // A hash made with other parameters still verifies.
        let h = light().hash("pw").unwrap();
        Passwords::with_params(128, 2, 1)
            .unwrap()
            .verify("pw", &h)
            .unwrap();
    }

    #[test]
    fn bad_inputs_are_precise_errors() {
        let p = light();
        assert!(matches!(
            p.verify("pw", "not a hash"),
            Err(PasswordError::MalformedHash(_))
        ));
        assert!(matches!(
            p.hash(&"x".repeat(MAX_PASSWORD_LEN + 1)),
            Err(PasswordError::TooLong)
        ));
        assert!(matches!(
            Passwords::with_params(1, 1, 1),
            Err(PasswordError::Params(_))
        ));
    }

    #[test]
    fn production_params_are_argon2id_19mib() {
        let h = Passwords::production().hash("pw").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    }
}
