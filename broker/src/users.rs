//! Users and their credentials, checked in the handshake (`PLAIN`).
//!
//! Passwords are never stored: a user carries `sha256$<salt hex>$<digest hex>`, the SHA-256 of
//! the salt followed by the password, made by `ruuster hash-password`. A salted fast hash is
//! enough against a stolen config file only for long random passwords; a slow KDF (argon2) is the
//! next step and would have to run off the executors.
//!
//! Without configured users the broker has one, `guest` with password `guest`, which may connect
//! from loopback only, as RabbitMQ's default user may.

use std::net::IpAddr;

use ruuster_wire::ErrorCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

const SALT_BYTES: usize = 16;
const DIGEST_BYTES: usize = 32;

/// A user as the config file names it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
    /// When true, the user may connect only from a loopback address.
    #[serde(default)]
    pub loopback_only: bool,
}

#[derive(Clone, Debug)]
struct User {
    name: String,
    salt: [u8; SALT_BYTES],
    digest: [u8; DIGEST_BYTES],
    loopback_only: bool,
}

/// The users a broker accepts.
#[derive(Clone, Debug)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// The users of the config, or the loopback-only `guest` when there are none.
    pub fn from_config(entries: &[UserConfig]) -> Result<Users, String> {
        if entries.is_empty() {
            let salt = *b"ruuster-guest-01";
            let user = User {
                name: "guest".into(),
                salt,
                digest: digest(&salt, "guest"),
                loopback_only: true,
            };
            return Ok(Users { users: vec![user] });
        }
        let mut users = Vec::with_capacity(entries.len());
        for entry in entries {
            let (salt, digest) = parse_hash(&entry.password_hash).ok_or_else(|| {
                format!(
                    "user {:?}: password_hash is not sha256$salt$digest",
                    entry.name
                )
            })?;
            users.push(User {
                name: entry.name.clone(),
                salt,
                digest,
                loopback_only: entry.loopback_only,
            });
        }
        Ok(Users { users })
    }

    /// Checks a `PLAIN` login from `peer`. Every failure is the same error, so that a client
    /// cannot tell an unknown user from a wrong password.
    pub fn check(&self, name: &str, password: &str, peer: IpAddr) -> Result<(), ErrorCode> {
        let Some(user) = self.users.iter().find(|user| user.name == name) else {
            return Err(ErrorCode::BAD_CREDENTIALS);
        };
        let candidate = digest(&user.salt, password);
        let difference = candidate
            .iter()
            .zip(&user.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(ErrorCode::BAD_CREDENTIALS);
        }
        if user.loopback_only && !peer.is_loopback() {
            return Err(ErrorCode::ACCESS_REFUSED);
        }
        Ok(())
    }
}

/// A `password_hash` value for `password` with `salt`.
pub fn hash_password(password: &str, salt: [u8; SALT_BYTES]) -> String {
    format!("sha256${}${}", hex(&salt), hex(&digest(&salt, password)))
}

fn digest(salt: &[u8], password: &str) -> [u8; DIGEST_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

fn parse_hash(text: &str) -> Option<([u8; SALT_BYTES], [u8; DIGEST_BYTES])> {
    let mut parts = text.split('$');
    if parts.next()? != "sha256" {
        return None;
    }
    let salt = unhex(parts.next()?)?;
    let digest = unhex(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((salt.try_into().ok()?, digest.try_into().ok()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn the_default_guest_may_log_in_from_loopback_only() {
        let users = Users::from_config(&[]).unwrap();
        users.check("guest", "guest", LOOPBACK).unwrap();
        assert_eq!(
            users.check("guest", "guest", REMOTE),
            Err(ErrorCode::ACCESS_REFUSED)
        );
        assert_eq!(
            users.check("guest", "wrong", LOOPBACK),
            Err(ErrorCode::BAD_CREDENTIALS)
        );
        assert_eq!(
            users.check("nobody", "guest", LOOPBACK),
            Err(ErrorCode::BAD_CREDENTIALS)
        );
    }

    #[test]
    fn a_configured_user_is_checked_against_its_salted_hash() {
        let entry = UserConfig {
            name: "app".into(),
            password_hash: hash_password("s3cret", *b"0123456789abcdef"),
            loopback_only: false,
        };
        let users = Users::from_config(&[entry]).unwrap();
        users.check("app", "s3cret", REMOTE).unwrap();
        assert_eq!(
            users.check("app", "s3cret!", REMOTE),
            Err(ErrorCode::BAD_CREDENTIALS)
        );
        assert_eq!(
            users.check("guest", "guest", LOOPBACK),
            Err(ErrorCode::BAD_CREDENTIALS)
        );
    }

    #[test]
    fn a_malformed_hash_is_refused_at_start() {
        for bad in ["plain", "sha256$zz$00", "md5$00$00", "sha256$00$00$00"] {
            let entry = UserConfig {
                name: "x".into(),
                password_hash: bad.into(),
                loopback_only: false,
            };
            assert!(Users::from_config(&[entry]).is_err(), "{bad} was accepted");
        }
    }
}
