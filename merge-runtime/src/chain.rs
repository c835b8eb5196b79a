//! Rendering an error and its causes (`source()` chain) as one line, for
//! the reasons recorded in reports and state files (JSON strings). Errors
//! themselves stay typed; this is only their text.

use std::error::Error;

/// `error: cause: cause…`, each level once: a cause whose text its
/// parent's message already shows (an error type that still prints its
/// source) is not repeated.
pub fn text(e: &(dyn Error + 'static)) -> String {
    let mut parent = e.to_string();
    let mut out = parent.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !parent.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        parent = t;
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("opening x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_level_once() {
        let e = Outer(std::io::Error::other("gone"));
        assert_eq!(super::text(&e), "opening x: gone");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("opening y: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_repeated_cause_is_dropped() {
        let e = Repeats(std::io::Error::other("gone"));
        assert_eq!(super::text(&e), "opening y: gone");
    }
}
