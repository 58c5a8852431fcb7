//! Turning TOML or JSON text into typed values, with errors that say where.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// The two syntaxes a human may write a goal or config in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// The format a file name's extension says, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Text that did not parse into the expected shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Parses TOML into `T`, locating the error.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ParseError {
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

/// Parses JSON into `T`, locating the error.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    serde_json::from_str(text).map_err(|e| {
        let line = (e.line() > 0).then_some(e.line());
        let column = (e.column() > 0).then_some(e.column());
        // serde_json appends " at line L column C"; we report those apart.
        let msg = e.to_string();
        let message = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        ParseError {
            line,
            column,
            message,
        }
    })
}

/// Parses `text` in `format`.
pub fn from_text<T: DeserializeOwned>(format: Format, text: &str) -> Result<T, ParseError> {
    match format {
        Format::Toml => from_toml(text),
        Format::Json => from_json(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn toml_errors_have_positions() {
        let e = from_toml::<T>("a = 1\nb = 2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown field `b`"), "{e}");
        let e = from_toml::<T>("a = \n").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn json_errors_have_positions() {
        let e = from_json::<T>("{\n  \"a\": 1,\n  \"zz\": 2}").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown field `zz`"), "{e}");
        assert!(!e.message.contains("at line"), "{e}");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("ab\ncdé", 6), (2, 4));
    }
}
