//! Identifiers of goals, tasks and workers, and capability names.
//!
//! They become parts of file names, so they are restricted to
//! `[A-Za-z0-9][A-Za-z0-9_-]{0,63}`: no `.`, no `/`, nothing that could name a
//! path outside the bus root.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Checks `s` against the id rule; the error says what is wrong.
pub fn check_id(s: &str) -> Result<(), String> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err("an id must not be empty".into());
    }
    if bytes.len() > MAX_ID_LEN {
        return Err(format!(
            "id {s:?} is {} characters long; the limit is {MAX_ID_LEN}",
            bytes.len()
        ));
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return Err(format!(
            "id {s:?} must start with a letter or digit (ids match [A-Za-z0-9][A-Za-z0-9_-]{{0,63}})"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "id {s:?} contains {c:?}; ids match [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}"
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        // Shared, not copied: the engine holds each id in several indexes.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, String> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s.into()))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A goal, task or worker id.
    Id
);
id_type!(
    /// A capability name, such as `llm` or `git`: the same rule as ids.
    Capability
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "A9", "release-notes", "x_y-z", &"a".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "a.b",
            "a/b",
            "..",
            "é",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        let err = serde_json::from_str::<Id>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("must start with"), "{err}");
        let id: Id = serde_json::from_str("\"gather\"").unwrap();
        assert_eq!(id.as_str(), "gather");
    }
}
