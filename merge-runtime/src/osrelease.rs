//! The os-release / extension-release file syntax (systemd's env-file
//! grammar): `KEY=value` lines, single and double quotes, backslash escapes
//! and continuations, `#`/`;` comments. Owns parsing only; what the fields
//! mean lives in [`crate::release`].

use std::path::{Path, PathBuf};

/// A parsed release file: its `KEY=value` pairs in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    pairs: Vec<(String, String)>,
    /// Lines that were ignored, with the reason (`line N: ...`).
    pub warnings: Vec<String>,
}

impl ReleaseFile {
    /// Parses `text` read from `path`. Never fails: like systemd, lines with
    /// invalid keys are skipped (and recorded in `warnings`).
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> ReleaseFile {
        let mut out = ReleaseFile {
            path: path.into(),
            ..ReleaseFile::default()
        };
        Parser::default().run(text, &mut out);
        out
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> std::io::Result<ReleaseFile> {
        let bytes = std::fs::read(path)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(ReleaseFile::parse(path, &text))
    }

    /// The value of the last assignment of `key` (systemd's
    /// `strv_env_pairs_get()` semantics), if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when set and not empty (systemd's `isempty()`
    /// checks treat `KEY=` like a missing key).
    pub fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// True when the file holds no assignment at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
    CommentEscape,
}

#[derive(Default)]
struct Parser {
    state: State,
    key: String,
    value: String,
    /// Length of `value` before trailing unquoted whitespace.
    value_trim: usize,
    line: usize,
    key_line: usize,
}

fn key_is_valid(k: &str) -> bool {
    let mut chars = k.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Parser {
    fn emit(&mut self, out: &mut ReleaseFile) {
        let key = self.key.trim_end().to_string();
        let mut value = std::mem::take(&mut self.value);
        value.truncate(self.value_trim);
        self.key.clear();
        self.value_trim = 0;
        if key_is_valid(&key) {
            out.pairs.push((key, value));
        } else {
            out.warnings.push(format!(
                "line {}: variable {key:?} has an invalid name, ignoring",
                self.key_line
            ));
        }
    }

    fn push_value(&mut self, c: char, quoted: bool) {
        self.value.push(c);
        if quoted || !c.is_whitespace() {
            self.value_trim = self.value.len();
        }
    }

    fn run(mut self, text: &str, out: &mut ReleaseFile) {
        self.line = 1;
        for c in text.chars() {
            let newline = c == '\n' || c == '\r';
            match self.state {
                State::PreKey => {
                    if c == '#' || c == ';' {
                        self.state = State::Comment;
                    } else if !c.is_whitespace() {
                        self.state = State::Key;
                        self.key_line = self.line;
                        self.key.push(c);
                    }
                }
                State::Key => {
                    if newline {
                        out.warnings.push(format!(
                            "line {}: {:?} is not an assignment (no '='), ignoring",
                            self.key_line,
                            self.key.trim_end()
                        ));
                        self.key.clear();
                        self.state = State::PreKey;
                    } else if c == '=' {
                        self.state = State::PreValue;
                    } else {
                        self.key.push(c);
                    }
                }
                State::PreValue => {
                    if newline {
                        self.state = State::PreKey;
                        self.emit(out);
                    } else if c == '\'' {
                        self.state = State::SingleQuote;
                    } else if c == '"' {
                        self.state = State::DoubleQuote;
                    } else if c == '\\' {
                        self.state = State::ValueEscape;
                    } else if !c.is_whitespace() {
                        self.state = State::Value;
                        self.push_value(c, false);
                    }
                }
                State::Value => {
                    if newline {
                        self.state = State::PreKey;
                        self.emit(out);
                    } else if c == '\\' {
                        self.state = State::ValueEscape;
                    } else {
                        self.push_value(c, false);
                    }
                }
                State::ValueEscape => {
                    self.state = State::Value;
                    if !newline {
                        self.push_value(c, true);
                    }
                }
                State::SingleQuote => {
                    if c == '\'' {
                        self.state = State::PreValue;
                    } else {
                        self.push_value(c, true);
                    }
                }
                State::DoubleQuote => {
                    if c == '"' {
                        self.state = State::PreValue;
                    } else if c == '\\' {
                        self.state = State::DoubleQuoteEscape;
                    } else {
                        self.push_value(c, true);
                    }
                }
                State::DoubleQuoteEscape => {
                    self.state = State::DoubleQuote;
                    if matches!(c, '"' | '\\' | '`' | '$') {
                        self.push_value(c, true);
                    } else if !newline {
                        self.push_value('\\', true);
                        self.push_value(c, true);
                    }
                }
                State::Comment => {
                    if c == '\\' {
                        self.state = State::CommentEscape;
                    } else if newline {
                        self.state = State::PreKey;
                    }
                }
                State::CommentEscape => self.state = State::Comment,
            }
            if c == '\n' {
                self.line += 1;
            }
        }
        match self.state {
            State::PreValue
            | State::Value
            | State::ValueEscape
            | State::SingleQuote
            | State::DoubleQuote
            | State::DoubleQuoteEscape => {
                if matches!(
                    self.state,
                    State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape
                ) {
                    out.warnings.push(format!(
                        "line {}: unterminated quote in the value of {:?}",
                        self.key_line,
                        self.key.trim_end()
                    ));
                }
                self.emit(out);
            }
            State::Key => out.warnings.push(format!(
                "line {}: {:?} is not an assignment (no '='), ignoring",
                self.key_line,
                self.key.trim_end()
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ReleaseFile {
        ReleaseFile::parse("test", s)
    }

    #[test]
    fn plain_quoted_and_comments() {
        let f = p("# c\nID=debian\nVERSION_ID=\"12\"\n; other\nNAME='Debian GNU/Linux'\nX=a b  \n");
        assert_eq!(f.get("ID"), Some("debian"));
        assert_eq!(f.get("VERSION_ID"), Some("12"));
        assert_eq!(f.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(f.get("X"), Some("a b"));
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }

    #[test]
    fn last_assignment_wins_and_empty_is_empty() {
        let f = p("ID=a\nID=b\nVERSION_ID=\n");
        assert_eq!(f.get("ID"), Some("b"));
        assert_eq!(f.get("VERSION_ID"), Some(""));
        assert_eq!(f.get_nonempty("VERSION_ID"), None);
    }

    #[test]
    fn escapes_and_continuations() {
        let f = p("A=\"x\\\"y\\n\"\nB=one\\\ntwo\nC=\"q\" 'r'\nD=\"a\\\nb\"");
        assert_eq!(f.get("A"), Some("x\"y\\n"));
        assert_eq!(f.get("B"), Some("onetwo"));
        assert_eq!(f.get("C"), Some("qr"));
        assert_eq!(f.get("D"), Some("ab"));
    }

    #[test]
    fn invalid_lines_are_reported_with_line_numbers() {
        let f = p("ID=x\n1BAD=y\nnoequals\n");
        assert_eq!(f.get("ID"), Some("x"));
        assert_eq!(f.pairs().len(), 1);
        assert!(f.warnings[0].starts_with("line 2:"), "{:?}", f.warnings);
        assert!(f.warnings[1].starts_with("line 3:"), "{:?}", f.warnings);
    }

    #[test]
    fn empty_file_is_empty() {
        assert!(p("").is_empty());
        assert!(p("# only a comment\n\n").is_empty());
    }
}
