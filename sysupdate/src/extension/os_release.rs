//! The os-release / extension-release file format: systemd's env-file
//! grammar (`parse_env_file_internal()` in `env-file.c`) as
//! `load_env_file_pairs()` reads it, and a renderer whose output that
//! grammar reads back unchanged.
//!
//! The grammar: `KEY=value` assignments; whitespace around keys and
//! unquoted values is dropped; values may be built from unquoted, `'…'`
//! and `"…"` pieces (`A="x" 'y'` is `xy`); a backslash escapes the next
//! character in unquoted values, only `" \ $ \`` inside double quotes (and
//! is kept before others), and swallows a following newline (a
//! continuation line); `#` and `;` start comment lines. Whitespace is
//! exactly space, tab, CR and LF. A later assignment of a key replaces
//! the value in place. A file with a NUL byte, or an assignment that is
//! not UTF-8, is refused as a whole, as systemd does.
//!
//! One deliberate choice: a comment line ending in a backslash does not
//! swallow the next line (systemd ≥ 254; 252 treated the next line as
//! part of the comment).

use std::fmt;

/// An os-release style file: `KEY=value` pairs in the order keys first
/// appear, each key once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsRelease {
    pairs: Vec<(String, String)>,
}

/// Something wrong at a line of an os-release file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct OsReleaseError {
    /// 1-based line where the assignment (or the problem) starts.
    pub line: usize,
    pub problem: Problem,
}

/// What is wrong. [`Problem::refuses_file`] tells the kinds for which
/// systemd ignores the whole file from the ones it skips or tolerates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the file contains a NUL byte; systemd refuses such files, remove it")]
    NulByte,
    #[error("the assignment of {key:?} is not valid UTF-8; systemd refuses such files, re-encode it as UTF-8")]
    InvalidUtf8 { key: String },
    #[error("{text:?} is not an assignment: expected KEY=value (comments start with '#')")]
    NotAnAssignment { text: String },
    #[error("{key:?} is not a valid variable name: use letters, digits and '_', not starting with a digit")]
    InvalidKey { key: String },
    #[error("the value of {key} has no closing quote")]
    UnterminatedQuote { key: String },
}

impl Problem {
    /// True when systemd ignores the whole file because of this problem.
    pub fn refuses_file(&self) -> bool {
        matches!(self, Problem::NulByte | Problem::InvalidUtf8 { .. })
    }
}

/// A key or value that [`OsRelease::set`] cannot store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAssignment {
    #[error("{0:?} is not a valid os-release key: use letters, digits and '_', not starting with a digit")]
    Key(String),
    #[error("the value of {0} contains a NUL byte, which os-release files cannot hold")]
    NulInValue(String),
}

/// The result of a lenient parse: the pairs systemd would see, and what
/// it would have skipped or tolerated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lenient {
    pub release: OsRelease,
    pub warnings: Vec<OsReleaseError>,
}

/// True for a valid environment variable name (systemd's
/// `env_name_is_valid()` restricted to os-release practice).
pub fn key_is_valid(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl OsRelease {
    /// Parses `text` strictly: every problem is an error (the first one,
    /// with its line). For files this project writes or is handed to
    /// check.
    pub fn parse(text: &str) -> Result<OsRelease, OsReleaseError> {
        let lenient = OsRelease::parse_bytes_lenient(text.as_bytes())?;
        match lenient.warnings.into_iter().min_by_key(|w| w.line) {
            Some(w) => Err(w),
            None => Ok(lenient.release),
        }
    }

    /// Parses `text` as systemd does: lines that are not assignments are
    /// skipped, invalid keys and unterminated quotes are kept (each with a
    /// warning). Fails only where systemd refuses the whole file.
    pub fn parse_lenient(text: &str) -> Result<Lenient, OsReleaseError> {
        OsRelease::parse_bytes_lenient(text.as_bytes())
    }

    /// [`OsRelease::parse_lenient`] for raw file contents, which need not
    /// be UTF-8 where systemd does not look (comments, skipped lines).
    pub fn parse_bytes_lenient(bytes: &[u8]) -> Result<Lenient, OsReleaseError> {
        let mut out = Lenient::default();
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            return Err(OsReleaseError {
                line: 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count(),
                problem: Problem::NulByte,
            });
        }
        Parser::default().run(bytes, &mut out)?;
        Ok(out)
    }

    /// The value of `key`, if assigned (possibly empty).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when assigned and not empty: systemd's
    /// `isempty()` checks treat `KEY=` like a missing key.
    pub fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Assigns `key`, replacing an earlier value in place.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<(), BadAssignment> {
        let value = value.into();
        if !key_is_valid(key) {
            return Err(BadAssignment::Key(key.to_string()));
        }
        if value.contains('\0') {
            return Err(BadAssignment::NulInValue(key.to_string()));
        }
        self.insert(key.to_string(), value);
        Ok(())
    }

    /// Assigns without checking; for keys and values this crate built.
    pub(crate) fn insert(&mut self, key: String, value: String) {
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key, value)),
        }
    }

    /// True when the file holds no assignment at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// The pairs, in the order their keys first appear.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Renders one `KEY=value` line per pair, double-quoting values that
    /// are not plain, so that parsing the text gives back these pairs.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.pairs {
            s.push_str(k);
            s.push('=');
            quote_into(&mut s, v);
            s.push('\n');
        }
        s
    }
}

impl fmt::Display for OsRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// `KEY=value` as a file would hold it (the value quoted if needed): for
/// messages that quote a file.
pub(crate) fn assignment(key: &str, value: &str) -> String {
    let mut s = format!("{key}=");
    quote_into(&mut s, value);
    s
}

fn quote_into(s: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '.' | '_' | '-' | '+' | ',' | ':' | '/' | '@' | '%' | '~' | '^'
                )
        });
    if plain {
        s.push_str(v);
        return;
    }
    s.push('"');
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
}

// systemd's character classes (string-util.h, escape.h).
fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}
fn is_newline(b: u8) -> bool {
    matches!(b, b'\n' | b'\r')
}
fn needs_shell_escape(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | b'`' | b'$')
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

/// The state machine of `parse_env_file_internal()`, on bytes (every
/// byte it treats specially is ASCII, so UTF-8 sequences pass whole).
#[derive(Default)]
struct Parser {
    state: State,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Length of `key` before trailing whitespace.
    key_trim: usize,
    /// Start of the trailing unquoted whitespace of `value`, if any.
    value_ws: Option<usize>,
    line: usize,
    key_line: usize,
}

impl Parser {
    fn emit(&mut self, out: &mut Lenient, unterminated: bool) -> Result<(), OsReleaseError> {
        let mut key = std::mem::take(&mut self.key);
        key.truncate(self.key_trim);
        let mut value = std::mem::take(&mut self.value);
        if let Some(at) = self.value_ws.take() {
            value.truncate(at);
        }
        let at = |problem| OsReleaseError {
            line: self.key_line,
            problem,
        };
        let (key, value) = match (String::from_utf8(key), String::from_utf8(value)) {
            (Ok(k), Ok(v)) => (k, v),
            (k, _) => {
                let key = match k {
                    Ok(k) => k,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                return Err(at(Problem::InvalidUtf8 { key }));
            }
        };
        if !key_is_valid(&key) {
            out.warnings
                .push(at(Problem::InvalidKey { key: key.clone() }));
        }
        if unterminated {
            out.warnings
                .push(at(Problem::UnterminatedQuote { key: key.clone() }));
        }
        out.release.insert(key, value);
        Ok(())
    }

    fn not_an_assignment(&mut self, out: &mut Lenient) {
        let text = String::from_utf8_lossy(&self.key[..self.key_trim]).into_owned();
        out.warnings.push(OsReleaseError {
            line: self.key_line,
            problem: Problem::NotAnAssignment { text },
        });
        self.key.clear();
    }

    fn push_key(&mut self, b: u8) {
        self.key.push(b);
        if !is_whitespace(b) {
            self.key_trim = self.key.len();
        }
    }

    /// Appends to the value; `plain` bytes (unquoted, unescaped) may be
    /// trailing whitespace that is chopped off at the end of the line.
    fn push_value(&mut self, b: u8, plain: bool) {
        if plain && is_whitespace(b) {
            self.value_ws.get_or_insert(self.value.len());
        } else {
            self.value_ws = None;
        }
        self.value.push(b);
    }

    fn run(mut self, bytes: &[u8], out: &mut Lenient) -> Result<(), OsReleaseError> {
        self.line = 1;
        for &c in bytes {
            match self.state {
                State::PreKey => {
                    if c == b'#' || c == b';' {
                        self.state = State::Comment;
                    } else if !is_whitespace(c) {
                        self.state = State::Key;
                        self.key_line = self.line;
                        self.key_trim = 0;
                        self.push_key(c);
                    }
                }
                State::Key => {
                    if is_newline(c) {
                        self.state = State::PreKey;
                        self.not_an_assignment(out);
                    } else if c == b'=' {
                        self.state = State::PreValue;
                        self.value_ws = None;
                    } else {
                        self.push_key(c);
                    }
                }
                State::PreValue => {
                    if is_newline(c) {
                        self.state = State::PreKey;
                        self.emit(out, false)?;
                    } else if c == b'\'' {
                        self.state = State::SingleQuote;
                    } else if c == b'"' {
                        self.state = State::DoubleQuote;
                    } else if c == b'\\' {
                        self.state = State::ValueEscape;
                    } else if !is_whitespace(c) {
                        self.state = State::Value;
                        self.push_value(c, true);
                    }
                }
                State::Value => {
                    if is_newline(c) {
                        self.state = State::PreKey;
                        self.emit(out, false)?;
                    } else if c == b'\\' {
                        self.state = State::ValueEscape;
                        self.value_ws = None;
                    } else {
                        self.push_value(c, true);
                    }
                }
                State::ValueEscape => {
                    self.state = State::Value;
                    // An escaped newline is swallowed: a continuation line.
                    if !is_newline(c) {
                        self.push_value(c, false);
                    }
                }
                State::SingleQuote => {
                    if c == b'\'' {
                        self.state = State::PreValue;
                    } else {
                        self.push_value(c, false);
                    }
                }
                State::DoubleQuote => {
                    if c == b'"' {
                        self.state = State::PreValue;
                    } else if c == b'\\' {
                        self.state = State::DoubleQuoteEscape;
                    } else {
                        self.push_value(c, false);
                    }
                }
                State::DoubleQuoteEscape => {
                    self.state = State::DoubleQuote;
                    if needs_shell_escape(c) {
                        self.push_value(c, false);
                    } else if c != b'\n' {
                        // Like the shell: the backslash stays.
                        self.push_value(b'\\', false);
                        self.push_value(c, false);
                    }
                }
                State::Comment => {
                    if c == b'\\' {
                        self.state = State::CommentEscape;
                    } else if is_newline(c) {
                        self.state = State::PreKey;
                    }
                }
                State::CommentEscape => {
                    // systemd ≥ 254: the newline still ends the comment.
                    self.state = if is_newline(c) {
                        State::PreKey
                    } else {
                        State::Comment
                    };
                }
            }
            if c == b'\n' {
                self.line += 1;
            }
        }
        match self.state {
            State::PreValue | State::Value | State::ValueEscape => self.emit(out, false)?,
            State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape => {
                self.emit(out, true)?
            }
            State::Key => self.not_an_assignment(out),
            State::PreKey | State::Comment | State::CommentEscape => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OsRelease {
        OsRelease::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn lenient(s: &str) -> Lenient {
        OsRelease::parse_lenient(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn pairs(r: &OsRelease) -> Vec<(&str, &str)> {
        r.iter().collect()
    }

    // From bakery's copy.
    #[test]
    fn parses_os_release_syntax() {
        let r = p(
            "# c\n\nID=debian\nNAME=\"Debian GNU/Linux\"\nX='a b'\nY=\"q\\\"\\$\"\n ID_LIKE = x \n",
        );
        assert_eq!(r.get("ID"), Some("debian"));
        assert_eq!(r.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(r.get("X"), Some("a b"));
        assert_eq!(r.get("Y"), Some("q\"$"));
        assert_eq!(r.get("ID_LIKE"), Some("x"));
        assert!(OsRelease::parse("A=\"x").is_err());
        assert!(OsRelease::parse("novalue")
            .unwrap_err()
            .to_string()
            .starts_with("line 1:"));
        assert!(OsRelease::parse("1A=x").is_err());
    }

    // From merge-runtime's copy.
    #[test]
    fn plain_quoted_and_comments() {
        let f = lenient(
            "# c\nID=debian\nVERSION_ID=\"12\"\n; other\nNAME='Debian GNU/Linux'\nX=a b  \n",
        );
        assert_eq!(f.release.get("ID"), Some("debian"));
        assert_eq!(f.release.get("VERSION_ID"), Some("12"));
        assert_eq!(f.release.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(f.release.get("X"), Some("a b"));
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }

    #[test]
    fn last_assignment_wins_and_empty_is_empty() {
        let f = p("ID=a\nVERSION_ID=\nID=b\n");
        assert_eq!(f.get("ID"), Some("b"));
        assert_eq!(f.get("VERSION_ID"), Some(""));
        assert_eq!(f.get_nonempty("VERSION_ID"), None);
        // The key keeps its first position, like load_env_file_pairs().
        assert_eq!(pairs(&f), [("ID", "b"), ("VERSION_ID", "")]);
    }

    #[test]
    fn escapes_and_continuations() {
        let f =
            p("A=\"x\\\"y\\n\"\nB=one\\\ntwo\nC=\"q\" 'r'\nD=\"a\\\nb\"\nE=\\ lead\nF=x\\\r\nG=1");
        assert_eq!(f.get("A"), Some("x\"y\\n"));
        assert_eq!(f.get("B"), Some("onetwo"));
        assert_eq!(f.get("C"), Some("qr"));
        assert_eq!(f.get("D"), Some("ab"));
        assert_eq!(f.get("E"), Some(" lead"));
        // The escaped CR is swallowed; the LF then ends the value.
        assert_eq!(f.get("F"), Some("x"));
        assert_eq!(f.get("G"), Some("1"));
    }

    #[test]
    fn whitespace_is_systemds() {
        // Vertical tab and form feed are not whitespace to systemd.
        let f = p("A=\u{b} x \u{c}\nB = y\t\nC=\u{a0}z\u{a0}\n");
        assert_eq!(f.get("A"), Some("\u{b} x \u{c}"));
        assert_eq!(f.get("B"), Some("y"));
        assert_eq!(f.get("C"), Some("\u{a0}z\u{a0}"));
        // Quotes are literal inside an unquoted value.
        assert_eq!(p("A=x \"y\"\n").get("A"), Some("x \"y\""));
        // Escaped trailing whitespace is kept.
        assert_eq!(p("A=x\\ \n").get("A"), Some("x "));
    }

    #[test]
    fn comment_ending_in_backslash_does_not_swallow_the_next_line() {
        let f = p("# a comment \\\nID=x\n");
        assert_eq!(f.get("ID"), Some("x"));
    }

    #[test]
    fn invalid_lines_are_reported_with_line_numbers() {
        let f = lenient("ID=x\n1BAD=y\nnoequals\nQ=\"open\nR=1\n");
        assert_eq!(f.release.get("ID"), Some("x"));
        // systemd keeps odd keys (load_env_file_pairs() does not check them)
        // and reads an unterminated quote to the end of the file.
        assert_eq!(
            pairs(&f.release),
            [("ID", "x"), ("1BAD", "y"), ("Q", "open\nR=1\n")]
        );
        let w: Vec<String> = f.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("line 2: \"1BAD\" is not a valid"), "{w:?}");
        assert!(
            w[1].starts_with("line 3: \"noequals\" is not an assignment"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("line 4: the value of Q has no closing quote"),
            "{w:?}"
        );
        // Strict parsing reports the first.
        assert_eq!(
            OsRelease::parse("ID=x\n1BAD=y\nnoequals\n")
                .unwrap_err()
                .line,
            2
        );
    }

    #[test]
    fn whole_file_refusals() {
        let e = OsRelease::parse_lenient("ID=x\nA=a\0b\n").unwrap_err();
        assert_eq!((e.line, &e.problem), (2, &Problem::NulByte));
        assert!(e.problem.refuses_file());
        let e = OsRelease::parse_bytes_lenient(b"ID=x\nA=\xff\n").unwrap_err();
        assert_eq!(
            (e.line, e.problem),
            (2, Problem::InvalidUtf8 { key: "A".into() })
        );
        // Where systemd does not look, bytes need not be UTF-8.
        let f = OsRelease::parse_bytes_lenient(b"# \xff\nID=x\n").unwrap();
        assert_eq!(f.release.get("ID"), Some("x"));
    }

    #[test]
    fn empty_file_is_empty() {
        assert!(p("").is_empty());
        assert!(p("# only a comment\n\n").is_empty());
        assert!(!p("A=\n").is_empty());
    }

    #[test]
    fn set_validates() {
        let mut r = OsRelease::default();
        r.set("ID", "x").unwrap();
        assert!(matches!(r.set("1D", "x"), Err(BadAssignment::Key(_))));
        assert!(matches!(r.set("A B", "x"), Err(BadAssignment::Key(_))));
        assert!(matches!(
            r.set("ID", "a\0b"),
            Err(BadAssignment::NulInValue(_))
        ));
        assert_eq!(r.render(), "ID=x\n");
    }

    #[test]
    fn render_round_trips() {
        let mut r = OsRelease::default();
        r.set("A", "plain-1.0").unwrap();
        r.set("B", "two words").unwrap();
        r.set("C", "q\"$`\\").unwrap();
        r.set("D", "").unwrap();
        r.set("E", "multi\nline\r\n").unwrap();
        let text = r.render();
        assert!(
            text.starts_with("A=plain-1.0\nB=\"two words\"\nC=\"q\\\"\\$\\`\\\\\"\nD=\"\"\n"),
            "{text}"
        );
        assert_eq!(p(&text), r);
        assert_eq!(r.to_string(), text);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*(\n\\PC*){0,5}") {
            let _ = OsRelease::parse(&text);
            let _ = OsRelease::parse_lenient(&text);
        }

        #[test]
        fn parse_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = OsRelease::parse_bytes_lenient(&bytes);
        }

        #[test]
        fn render_then_parse_is_identity(
            fields in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", "[^\0]{0,20}", 0..6)
        ) {
            let mut r = OsRelease::default();
            for (k, v) in &fields {
                r.set(k, v.clone()).unwrap();
            }
            proptest::prop_assert_eq!(OsRelease::parse(&r.render()).unwrap(), r);
        }

        /// Whatever the lenient parser keeps, odd keys included, renders
        /// to text that parses back to the same pairs.
        #[test]
        fn lenient_results_render_back(text in "[A-Za-z_=\"' \\\\#;\n\tx1.-]{0,60}") {
            if let Ok(l) = OsRelease::parse_lenient(&text) {
                let again = OsRelease::parse_lenient(&l.release.render()).unwrap();
                proptest::prop_assert_eq!(again.release, l.release);
            }
        }
    }
}
