//! Download progress as a stream of events, and a small renderer for the
//! CLI: `indicatif` bars when stderr is a terminal, one plain line per
//! start/retry/finish otherwise (logs stay readable in CI).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sysupdate::Sha256Digest;

/// What happened to one download. `id` is the request's index in the batch
/// given to [`super::Fetcher::fetch_all`] (0 for single fetches); `label` is
/// the file name shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The bytes are already in the cache; nothing is downloaded.
    CacheHit {
        id: usize,
        label: String,
        bytes: u64,
    },
    /// A request was sent (`offset` > 0 when resuming with `Range`).
    Started {
        id: usize,
        label: String,
        url: String,
        offset: u64,
        total: Option<u64>,
    },
    /// Bytes received so far for this download.
    Progress {
        id: usize,
        done: u64,
        total: Option<u64>,
    },
    /// A transient failure; the download is retried after `delay`.
    Retrying {
        id: usize,
        label: String,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// The server refused to resume; the download starts over.
    Restarted { id: usize, label: String },
    /// Downloaded, verified and stored in the cache.
    Finished {
        id: usize,
        label: String,
        bytes: u64,
        digest: Sha256Digest,
    },
    /// Gave up (the error is also returned to the caller).
    Failed {
        id: usize,
        label: String,
        error: String,
    },
}

/// Where events go. Called from download tasks, possibly concurrently.
pub type ProgressSink = Arc<dyn Fn(&Event) + Send + Sync>;

enum Mode {
    Bars {
        multi: MultiProgress,
        bars: HashMap<usize, ProgressBar>,
    },
    Plain(Box<dyn Write + Send>),
}

/// Renders [`Event`]s for a person.
pub struct Renderer {
    mode: Mutex<Mode>,
}

impl Renderer {
    /// Bars on a terminal, plain lines on stderr otherwise.
    pub fn auto() -> Renderer {
        if std::io::stderr().is_terminal() {
            Renderer::bars()
        } else {
            Renderer::plain(Box::new(std::io::stderr()))
        }
    }

    /// `indicatif` bars on stderr.
    pub fn bars() -> Renderer {
        Renderer {
            mode: Mutex::new(Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
            }),
        }
    }

    /// One line per start, retry, restart, finish and failure.
    pub fn plain(out: Box<dyn Write + Send>) -> Renderer {
        Renderer {
            mode: Mutex::new(Mode::Plain(out)),
        }
    }

    /// A sink that feeds this renderer.
    pub fn sink(self) -> ProgressSink {
        let this = Arc::new(self);
        Arc::new(move |e: &Event| this.render(e))
    }

    pub fn render(&self, event: &Event) {
        let Ok(mut mode) = self.mode.lock() else {
            return;
        };
        match &mut *mode {
            Mode::Plain(out) => {
                if let Some(line) = plain_line(event) {
                    let _ = writeln!(out, "{line}");
                }
            }
            Mode::Bars { multi, bars } => render_bar(multi, bars, event),
        }
    }
}

fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::CacheHit { label, bytes, .. } => format!("cached     {label} ({})", human(*bytes)),
        Event::Started {
            label, url, offset, ..
        } if *offset > 0 => {
            format!("resuming   {label} at {} from {url}", human(*offset))
        }
        Event::Started { label, url, .. } => format!("fetching   {label} from {url}"),
        Event::Progress { .. } => return None,
        Event::Retrying {
            label,
            attempt,
            delay,
            reason,
            ..
        } => format!("retrying   {label} (attempt {attempt}) in {delay:?}: {reason}"),
        Event::Restarted { label, .. } => format!("restarting {label}: the server does not resume"),
        Event::Finished {
            label,
            bytes,
            digest,
            ..
        } => format!("fetched    {label} ({}, sha256 {digest})", human(*bytes)),
        Event::Failed { label, error, .. } => format!("failed     {label}: {error}"),
    })
}

fn render_bar(multi: &MultiProgress, bars: &mut HashMap<usize, ProgressBar>, event: &Event) {
    let style = ProgressStyle::with_template(
        "{prefix:>24.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bar_for = |id: usize, label: &str| {
        bars.entry(id)
            .or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(shorten(label));
                bar
            })
            .clone()
    };
    match event {
        Event::CacheHit { id, label, bytes } => {
            let bar = bar_for(*id, label);
            bar.set_length(*bytes);
            bar.set_position(*bytes);
            bar.finish_with_message("cached");
        }
        Event::Started {
            id,
            label,
            offset,
            total,
            ..
        } => {
            let bar = bar_for(*id, label);
            bar.set_length(total.unwrap_or(0));
            bar.set_position(*offset);
            bar.set_message(if *offset > 0 { "resuming" } else { "" });
        }
        Event::Progress { id, done, total } => {
            if let Some(bar) = bars.get(id) {
                if let Some(t) = total {
                    bar.set_length(*t);
                }
                bar.set_position(*done);
            }
        }
        Event::Retrying {
            id,
            label,
            attempt,
            reason,
            ..
        } => bar_for(*id, label).set_message(format!("retry {attempt}: {reason}")),
        Event::Restarted { id, label } => {
            let bar = bar_for(*id, label);
            bar.set_position(0);
            bar.set_message("restarting");
        }
        Event::Finished { id, label, .. } => bar_for(*id, label).finish_with_message("ok"),
        Event::Failed { id, label, error } => {
            bar_for(*id, label).abandon_with_message(format!("failed: {error}"))
        }
    }
}

fn shorten(label: &str) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= 24 {
        label.to_string()
    } else {
        let tail: String = chars[chars.len() - 23..].iter().collect();
        format!("…{tail}")
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_renderer_prints_one_line_per_milestone() {
        let buf = Buf::default();
        let sink = Renderer::plain(Box::new(buf.clone())).sink();
        let label = "kubectl".to_string();
        sink(&Event::Started {
            id: 0,
            label: label.clone(),
            url: "https://dl.k8s.io/x/kubectl".into(),
            offset: 0,
            total: Some(10),
        });
        sink(&Event::Progress {
            id: 0,
            done: 5,
            total: Some(10),
        });
        sink(&Event::Finished {
            id: 0,
            label,
            bytes: 3 << 20,
            digest: Sha256Digest::from_bytes([0xab; 32]),
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("fetching") && lines[0].contains("https://dl.k8s.io/x/kubectl"));
        assert!(
            lines[1].contains("3.0 MiB") && lines[1].contains("abababab"),
            "{text}"
        );
    }
}
