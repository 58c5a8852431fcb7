//! File names on the bus: how a record's identity is spelled in its name.
//!
//! Ids cannot contain `.`, so `<goal>.<task>.<attempt>[.<worker>].json`
//! splits without ambiguity.

use std::fmt;

use crate::Id;

/// One attempt of one task of one goal: the unit every file is about.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptKey {
    pub goal: Id,
    pub task: Id,
    pub attempt: u32,
}

impl AttemptKey {
    pub fn new(goal: Id, task: Id, attempt: u32) -> Self {
        AttemptKey {
            goal,
            task,
            attempt,
        }
    }

    /// `tasks/` and `results/` name: `<goal>.<task>.<attempt>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.{}.json", self.goal, self.task, self.attempt)
    }

    /// `claimed/` name: `<goal>.<task>.<attempt>.<worker>.json`.
    pub fn claim_name(&self, worker: &str) -> String {
        format!("{}.{}.{}.{worker}.json", self.goal, self.task, self.attempt)
    }

    /// Name inside `archive/<goal>/`: `<task>.<attempt>.<kind>.json`.
    pub fn archive_name(&self, kind: ArchiveKind) -> String {
        format!("{}.{}.{}", self.task, self.attempt, kind.suffix())
    }

    /// Parses a `tasks/` or `results/` name.
    pub fn parse_file_name(name: &str) -> Option<AttemptKey> {
        let stem = name.strip_suffix(".json")?;
        let mut parts = stem.split('.');
        let (g, t, a) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        parse_parts(g, t, a)
    }

    /// Parses a `claimed/` name into the attempt and the worker.
    pub fn parse_claim_name(name: &str) -> Option<(AttemptKey, Id)> {
        let stem = name.strip_suffix(".json")?;
        let mut parts = stem.split('.');
        let (g, t, a, w) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((parse_parts(g, t, a)?, Id::new(w).ok()?))
    }

    /// Parses a name inside `archive/<goal>/`.
    pub fn parse_archive_name(goal: &Id, name: &str) -> Option<(AttemptKey, ArchiveKind)> {
        let mut parts = name.split('.');
        let (t, a, kind) = (parts.next()?, parts.next()?, parts.next()?);
        let kind = match (kind, parts.next(), parts.next()) {
            ("log", None, None) => ArchiveKind::Log,
            (k, Some("json"), None) => ArchiveKind::from_word(k)?,
            _ => return None,
        };
        Some((parse_parts(goal.as_str(), t, a)?, kind))
    }
}

fn parse_parts(g: &str, t: &str, a: &str) -> Option<AttemptKey> {
    // Attempt numbers are written without leading zeros, so each attempt
    // has exactly one spelling.
    if a.is_empty() || a.starts_with('0') || !a.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(AttemptKey {
        goal: Id::new(g).ok()?,
        task: Id::new(t).ok()?,
        attempt: a.parse().ok()?,
    })
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.goal, self.task, self.attempt)
    }
}
impl fmt::Debug for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a file in `archive/<goal>/` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// The task record as published (and claimed).
    Task,
    /// The result that ended the attempt.
    Result,
    /// A result that came too late (its attempt had already ended).
    Stale,
    /// The attempt's stdout/stderr (spawn and resident workers).
    Log,
}

impl ArchiveKind {
    fn suffix(self) -> &'static str {
        match self {
            ArchiveKind::Task => "task.json",
            ArchiveKind::Result => "result.json",
            ArchiveKind::Stale => "stale.json",
            ArchiveKind::Log => "log",
        }
    }
    fn from_word(w: &str) -> Option<Self> {
        Some(match w {
            "task" => ArchiveKind::Task,
            "result" => ArchiveKind::Result,
            "stale" => ArchiveKind::Stale,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let k = AttemptKey::new(Id::new("g").unwrap(), Id::new("t-1").unwrap(), 12);
        assert_eq!(AttemptKey::parse_file_name(&k.file_name()), Some(k.clone()));
        let (k2, w) = AttemptKey::parse_claim_name(&k.claim_name("w_1")).unwrap();
        assert_eq!((k2, w.as_str()), (k.clone(), "w_1"));
        for kind in [
            ArchiveKind::Task,
            ArchiveKind::Result,
            ArchiveKind::Stale,
            ArchiveKind::Log,
        ] {
            assert_eq!(
                AttemptKey::parse_archive_name(&k.goal, &k.archive_name(kind)),
                Some((k.clone(), kind))
            );
        }
    }

    #[test]
    fn refuses_odd_names() {
        for bad in [
            "g.t.json",
            "g.t.01.json",
            "g.t.1.x.json",
            "g.t.-1.json",
            ".g.t.1.json",
            "g.t.1.json.tmp",
            "g/t.t.1.json",
        ] {
            assert_eq!(AttemptKey::parse_file_name(bad), None, "{bad}");
        }
        assert!(AttemptKey::parse_claim_name("g.t.1.json").is_none());
    }
}
