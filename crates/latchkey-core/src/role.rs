//! Roles of tenant users and second-factor methods.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A user's role within a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages the tenant: 2FA policy, users, recovery requests.
    Admin,
    /// A supervisor of agents (no administration rights in Latchkey).
    Supervisor,
    /// A customer-service agent.
    Agent,
}

impl Role {
    /// All roles, in the order the settings list them.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Supervisor, Role::Agent];

    /// The wire name (`admin`, `supervisor`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Supervisor => "supervisor",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown role or method name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
}

impl UnknownName {
    /// The error for `value`, an unknown name of `kind`.
    pub fn new(kind: &'static str, value: &str) -> Self {
        Self { kind, value: value.to_owned() }
    }
}

impl FromStr for Role {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "supervisor" => Ok(Role::Supervisor),
            "agent" => Ok(Role::Agent),
            _ => Err(UnknownName { kind: "role", value: s.to_owned() }),
        }
    }
}

/// A second-factor method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// An authenticator app producing TOTP codes (RFC 6238).
    Authenticator,
    /// A one-time code sent to the user's registered email address.
    Email,
    /// A passkey or security key (W3C Web Authentication, DESIGN.md 5.1). Never in the
    /// default allowed lists.
    Webauthn,
}

impl Method {
    /// Every method, in display order. A method's place here is its bit in a [`MethodSet`]
    /// (stored): append new methods, never reorder.
    pub const ALL: [Method; 3] = [Method::Authenticator, Method::Email, Method::Webauthn];

    /// The wire name (`authenticator`, `email`, `webauthn`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Authenticator => "authenticator",
            Method::Email => "email",
            Method::Webauthn => "webauthn",
        }
    }

    fn bit(self) -> u8 {
        let place = Method::ALL.iter().position(|m| *m == self).unwrap_or(0);
        1 << place
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| UnknownName::new("method", s))
    }
}

/// A set of methods, stored as a bit mask (bit `i` = `Method::ALL[i]`: 1 = authenticator,
/// 2 = email, 4 = webauthn).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MethodSet(u8);

impl MethodSet {
    /// No method.
    pub const EMPTY: MethodSet = MethodSet(0);
    /// Authenticator and email (the default per role, DESIGN.md section 1).
    pub const BOTH: MethodSet = MethodSet(3);

    /// The set from its stored bit mask; unknown bits are dropped.
    pub fn from_bits(bits: i32) -> Self {
        let known = (1i32 << Method::ALL.len()) - 1;
        // Only known bits survive (fewer than 8 methods), so the cast cannot lose a method.
        Self((bits & known) as u8)
    }

    /// The stored bit mask.
    pub fn bits(self) -> i32 {
        i32::from(self.0)
    }

    /// Whether `method` is in the set.
    pub fn contains(self, method: Method) -> bool {
        self.0 & method.bit() != 0
    }

    /// The set with `method` added.
    pub fn with(self, method: Method) -> Self {
        Self(self.0 | method.bit())
    }

    /// Methods in both sets.
    pub fn intersect(self, other: MethodSet) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The methods, in display order.
    pub fn to_vec(self) -> Vec<Method> {
        Method::ALL.into_iter().filter(|m| self.contains(*m)).collect()
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        iter.into_iter().fold(MethodSet::EMPTY, MethodSet::with)
    }
}

impl fmt::Debug for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_vec()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_sets() {
        let email: MethodSet = [Method::Email].into_iter().collect();
        assert!(email.contains(Method::Email) && !email.contains(Method::Authenticator));
        assert_eq!(MethodSet::BOTH.intersect(email), email);
        assert_eq!(MethodSet::from_bits(MethodSet::BOTH.bits()), MethodSet::BOTH);
        assert_eq!(MethodSet::BOTH.to_vec(), vec![Method::Authenticator, Method::Email]);
        assert!(MethodSet::from_bits(8).is_empty());
        assert_eq!(MethodSet::from_bits(4).to_vec(), vec![Method::Webauthn]);
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().ok(), Some(r));
        }
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().ok(), Some(m));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
