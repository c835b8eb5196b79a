//! Reading a disk image's GPT with the real `sfdisk --dump`, so tests check
//! our partition tables against util-linux rather than our own reader.

use std::path::Path;
use std::process::Command;

use crate::{require_tool, run_ok};

/// One partition line of `sfdisk --dump`.
#[derive(Debug, Clone)]
pub struct Part {
    /// First sector (512 bytes).
    pub start: u64,
    /// Size in sectors (512 bytes).
    pub size: u64,
    pub type_guid: String,
    pub uuid: String,
    pub name: String,
    pub attrs: String,
}

impl Part {
    /// Byte offset in the image.
    pub fn offset(&self) -> u64 {
        self.start * 512
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.size * 512
    }

    /// Whether the partition has no sectors.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Runs `sfdisk --dump` on `image`; returns its output (for assertion
/// messages) and the partitions in table order.
pub fn dump(image: &Path) -> (String, Vec<Part>) {
    require_tool("sfdisk", "fdisk");
    let out = run_ok(Command::new("sfdisk").arg("--dump").arg(image));
    let parts = out
        .lines()
        .filter_map(|l| l.split_once(" : "))
        .map(|(_, fields)| {
            let get = |key: &str| {
                fields
                    .split(", ")
                    .find_map(|f| f.trim().strip_prefix(&format!("{key}=")))
                    .map(|v| v.trim().trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            let sectors = |key: &str| -> u64 {
                get(key)
                    .parse()
                    .unwrap_or_else(|e| panic!("sfdisk --dump: bad {key}= ({e}):\n{out}"))
            };
            Part {
                start: sectors("start"),
                size: sectors("size"),
                type_guid: get("type"),
                uuid: get("uuid"),
                name: get("name"),
                attrs: get("attrs"),
            }
        })
        .collect();
    (out, parts)
}
