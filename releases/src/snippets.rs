//! Node snippets: what a node needs to run one extension from the feed —
//! the image (with `verification.hash`), the `/etc/extensions/NAME.raw`
//! link, the transfer file, the verity certificate, the OpenPGP keyring and
//! the units that update and refresh it — as ONE model ([`NodeConfig`])
//! rendered both as a Butane fragment (variant `flatcar`, version `1.0.0`)
//! and as the Ignition config it translates to (spec `3.3.0`, the version
//! Flatcar's Butane 1.0.0 emits and Debian 12's `ignition-validate`
//! accepts), so the two cannot drift.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::name::ExtensionName;

/// The Ignition spec version of the rendered fragments.
pub const IGNITION_VERSION: &str = "3.3.0";
/// Butane variant and version whose translation is [`IGNITION_VERSION`].
pub const BUTANE_VARIANT: &str = "flatcar";
pub const BUTANE_VERSION: &str = "1.0.0";

/// What a node gets: files, links and systemd units.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeConfig {
    pub files: Vec<NodeFile>,
    pub links: Vec<NodeLink>,
    pub units: Vec<NodeUnit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    pub mode: u32,
    pub overwrite: bool,
    pub contents: Contents,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// UTF-8 text, inline (Butane `inline:`, Ignition `data:,…`).
    Text(String),
    /// Bytes, inline as a base64 data URL.
    Binary(Vec<u8>),
    /// Downloaded by Ignition and checked against its SHA-512.
    Remote { url: String, sha512_hex: String },
}

/// A symbolic link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLink {
    pub path: String,
    pub target: String,
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUnit {
    pub name: String,
    pub enabled: Option<bool>,
    pub contents: Option<String>,
    pub dropins: Vec<(String, String)>,
}

/// The inputs of one snippet: one extension, one stream, one architecture.
pub struct SnippetInput<'a> {
    pub name: &'a ExtensionName,
    /// `NAME` or `NAME-v1.30`: the transfer file's stem.
    pub stream_stem: &'a str,
    pub stream_id: &'a str,
    pub arch: &'a str,
    pub image_file: &'a str,
    pub image_url: &'a str,
    pub image_sha512_hex: &'a str,
    /// The transfer file's text (installed as `.conf` and `.transfer`).
    pub transfer: &'a str,
    pub keyring: &'a [u8],
    /// PEM certificate(s) that sign the images' verity root hashes.
    pub verity_certificate: Option<&'a str>,
}

/// Builds the node model for one extension/stream/architecture.
pub fn node_config(i: &SnippetInput<'_>) -> NodeConfig {
    let name = i.name.as_str();
    let image_path = format!("/opt/extensions/{name}/{}", i.image_file);
    let mut files = vec![NodeFile {
        path: image_path.clone(),
        mode: 0o444,
        overwrite: true,
        contents: Contents::Remote {
            url: i.image_url.to_string(),
            sha512_hex: i.image_sha512_hex.to_string(),
        },
    }];
    for suffix in ["conf", "transfer"] {
        files.push(NodeFile {
            path: format!("/etc/sysupdate.{name}.d/{}.{suffix}", i.stream_stem),
            mode: 0o644,
            overwrite: true,
            contents: Contents::Text(i.transfer.to_string()),
        });
    }
    if let Some(pem) = i.verity_certificate {
        files.push(NodeFile {
            path: format!("/etc/verity.d/{name}.crt"),
            mode: 0o644,
            overwrite: true,
            contents: Contents::Text(pem.to_string()),
        });
    }
    files.push(NodeFile {
        path: "/etc/systemd/import-pubring.gpg".to_string(),
        mode: 0o644,
        overwrite: true,
        contents: Contents::Binary(i.keyring.to_vec()),
    });
    let links = vec![NodeLink {
        path: format!("/etc/extensions/{name}.raw"),
        target: image_path,
        overwrite: true,
    }];
    let service = format!(
        "[Unit]\n\
         Description=Update the {name} system extension ({stream}) and refresh it\n\
         Documentation=man:systemd-sysupdate(8) man:systemd-sysext(8)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         ConditionPathExists=/etc/sysupdate.{name}.d\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         # Refresh the merged extensions only when the update moved the link.\n\
         ExecStart=/usr/bin/sh -c 'old=$$(readlink -f /etc/extensions/{name}.raw); /usr/lib/systemd/systemd-sysupdate --component={name} update || exit $$?; new=$$(readlink -f /etc/extensions/{name}.raw); if [ \"$$old\" != \"$$new\" ]; then exec /usr/bin/systemd-sysext refresh; fi'\n",
        stream = i.stream_id,
    );
    let timer = format!(
        "[Unit]\n\
         Description=Check for updates of the {name} system extension\n\
         \n\
         [Timer]\n\
         OnBootSec=15min\n\
         OnUnitActiveSec=6h\n\
         RandomizedDelaySec=30min\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    );
    let units = vec![
        NodeUnit {
            name: "systemd-sysext.service".to_string(),
            enabled: Some(true),
            contents: None,
            dropins: vec![],
        },
        NodeUnit {
            name: format!("sysext-update-{name}.service"),
            enabled: None,
            contents: Some(service),
            dropins: vec![],
        },
        NodeUnit {
            name: format!("sysext-update-{name}.timer"),
            enabled: Some(true),
            contents: Some(timer),
            dropins: vec![],
        },
    ];
    NodeConfig {
        files,
        links,
        units,
    }
}

/// Percent-encodes for a `data:,` URL (RFC 2397): everything but RFC 3986
/// unreserved characters.
pub fn data_url_text(text: &str) -> String {
    let mut s = String::from("data:,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A base64 `data:` URL.
pub fn data_url_binary(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

impl NodeConfig {
    /// The Ignition config (JSON value).
    pub fn to_ignition(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|f| {
                let contents = match &f.contents {
                    Contents::Text(t) => json!({ "source": data_url_text(t) }),
                    Contents::Binary(b) => json!({ "source": data_url_binary(b) }),
                    Contents::Remote { url, sha512_hex } => json!({
                        "source": url,
                        "verification": { "hash": format!("sha512-{sha512_hex}") },
                    }),
                };
                json!({
                    "path": f.path,
                    "mode": f.mode,
                    "overwrite": f.overwrite,
                    "contents": contents,
                })
            })
            .collect();
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|l| json!({ "path": l.path, "target": l.target, "hard": false, "overwrite": l.overwrite }))
            .collect();
        let units: Vec<Value> = self
            .units
            .iter()
            .map(|u| {
                let mut m = Map::new();
                m.insert("name".into(), json!(u.name));
                if let Some(e) = u.enabled {
                    m.insert("enabled".into(), json!(e));
                }
                if let Some(c) = &u.contents {
                    m.insert("contents".into(), json!(c));
                }
                if !u.dropins.is_empty() {
                    let d: Vec<Value> = u
                        .dropins
                        .iter()
                        .map(|(n, c)| json!({ "name": n, "contents": c }))
                        .collect();
                    m.insert("dropins".into(), Value::Array(d));
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "ignition": { "version": IGNITION_VERSION },
            "storage": { "files": files, "links": links },
            "systemd": { "units": units },
        })
    }

    /// The Ignition config as pretty JSON text with a final newline.
    pub fn to_ignition_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_ignition()).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The Butane fragment (YAML) with a leading comment.
    pub fn to_butane(&self, comment: &str) -> String {
        let mut y = String::new();
        for line in comment.lines() {
            y.push_str("# ");
            y.push_str(line);
            y.push('\n');
        }
        y.push_str(&format!(
            "variant: {BUTANE_VARIANT}\nversion: {BUTANE_VERSION}\n"
        ));
        y.push_str("storage:\n  files:\n");
        for f in &self.files {
            y.push_str(&format!("    - path: {}\n", q(&f.path)));
            y.push_str(&format!("      mode: {}  # 0{:o}\n", f.mode, f.mode));
            y.push_str(&format!("      overwrite: {}\n", f.overwrite));
            y.push_str("      contents:\n");
            match &f.contents {
                Contents::Text(t) => {
                    y.push_str("        inline: ");
                    block_or_quoted(&mut y, t, 10);
                }
                Contents::Binary(b) => {
                    y.push_str(&format!("        source: {}\n", q(&data_url_binary(b))));
                }
                Contents::Remote { url, sha512_hex } => {
                    y.push_str(&format!("        source: {}\n", q(url)));
                    y.push_str("        verification:\n");
                    y.push_str(&format!(
                        "          hash: {}\n",
                        q(&format!("sha512-{sha512_hex}"))
                    ));
                }
            }
        }
        if !self.links.is_empty() {
            y.push_str("  links:\n");
            for l in &self.links {
                y.push_str(&format!("    - path: {}\n", q(&l.path)));
                y.push_str(&format!("      target: {}\n", q(&l.target)));
                y.push_str("      hard: false\n");
                y.push_str(&format!("      overwrite: {}\n", l.overwrite));
            }
        }
        if !self.units.is_empty() {
            y.push_str("systemd:\n  units:\n");
            for u in &self.units {
                y.push_str(&format!("    - name: {}\n", q(&u.name)));
                if let Some(e) = u.enabled {
                    y.push_str(&format!("      enabled: {e}\n"));
                }
                if let Some(c) = &u.contents {
                    y.push_str("      contents: ");
                    block_or_quoted(&mut y, c, 8);
                }
                if !u.dropins.is_empty() {
                    y.push_str("      dropins:\n");
                    for (n, c) in &u.dropins {
                        y.push_str(&format!("        - name: {}\n", q(n)));
                        y.push_str("          contents: ");
                        block_or_quoted(&mut y, c, 12);
                    }
                }
            }
        }
        y
    }
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Writes `text` as a literal block scalar (`|`) when that represents it
/// exactly, else as a double-quoted scalar. Ends with a newline.
fn block_or_quoted(y: &mut String, text: &str, indent: usize) {
    let literal_ok = text.ends_with('\n')
        && !text.ends_with("\n\n")
        && !text.starts_with([' ', '\t', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && !text.lines().any(|l| l.ends_with([' ', '\t']));
    if !literal_ok {
        y.push_str(&q(text));
        y.push('\n');
        return;
    }
    y.push_str("|\n");
    let pad = " ".repeat(indent);
    for line in text.lines() {
        if !line.is_empty() {
            y.push_str(&pad);
            y.push_str(line);
        }
        y.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_scalars_only_when_exact() {
        let mut y = String::new();
        block_or_quoted(&mut y, "a\n\nb\n", 2);
        assert_eq!(y, "|\n  a\n\n  b\n");
        let mut y = String::new();
        block_or_quoted(&mut y, "no newline", 2);
        assert_eq!(y, "\"no newline\"\n");
        let mut y = String::new();
        block_or_quoted(&mut y, " lead\n", 2);
        assert_eq!(y, "\" lead\\n\"\n");
    }

    #[test]
    fn data_urls() {
        assert_eq!(data_url_text("a b\n"), "data:,a%20b%0A");
        assert_eq!(data_url_binary(b"\x00\xff"), "data:;base64,AP8=");
    }
}
