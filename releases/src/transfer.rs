//! The transfer files a feed publishes for each stream (both `.conf` and
//! `.transfer`, same text): `Verify=yes`, a `url-file` source at the
//! extension's feed URL, a `regular-file` target in
//! `/opt/extensions/NAME` with `InstancesMax=` and
//! `CurrentSymlink=/etc/extensions/NAME.raw`. Installed on a node in
//! `/etc/sysupdate.NAME.d/` (component `NAME`).

use sysupdate::pattern::PatternError;
use sysupdate::transfer::{Source, SourceType, Target, TargetType, TransferSection};
use sysupdate::{PatternTemplate, Transfer};

use crate::layout::{FeedUrl, Stream};
use crate::name::ExtensionName;

/// Where a node keeps an extension's images.
pub fn target_dir(name: &ExtensionName) -> String {
    format!("/opt/extensions/{name}")
}

/// The link systemd-sysext merges: `/etc/extensions/NAME.raw`.
pub fn current_symlink(name: &ExtensionName) -> String {
    format!("/etc/extensions/{name}.raw")
}

/// The sysupdate component (`systemd-sysupdate -C NAME`), i.e. the
/// directory `/etc/sysupdate.NAME.d/`.
pub fn component_dir(name: &ExtensionName) -> String {
    format!("/etc/sysupdate.{name}.d")
}

/// The transfer definition of one stream.
pub fn stream_transfer(
    name: &ExtensionName,
    stream: &Stream,
    url: &FeedUrl,
    instances_max: u64,
) -> Result<Transfer, PatternError> {
    let pattern = PatternTemplate::new(stream.pattern(name))?;
    let mut target = Target::new(Some(TargetType::RegularFile), target_dir(name));
    target.patterns = vec![pattern.clone()];
    target.current_symlink = Some(current_symlink(name));
    target.instances_max = Some(instances_max.max(2));
    target.read_only = Some(true);
    target.mode = Some(0o444);
    Ok(Transfer {
        transfer: TransferSection {
            verify: Some(true),
            ..TransferSection::default()
        },
        source: Source {
            kind: SourceType::UrlFile,
            path: url.for_extension(name),
            path_relative_to: None,
            patterns: vec![pattern],
        },
        target,
    })
}

/// The file text: a comment naming the stream, then the canonical render.
pub fn render_stream_transfer(name: &ExtensionName, stream: &Stream, t: &Transfer) -> String {
    format!(
        "# {name} system extension, stream {stream}: install in {}/ and run\n\
         # systemd-sysupdate --component={name} update\n{}",
        component_dir(name),
        t.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn renders_a_minor_stream_that_sysupdate_parses_back() {
        let name = ExtensionName::new("kubernetes").unwrap();
        let url = FeedUrl::new("https://example.org/feed").unwrap();
        let t = stream_transfer(&name, &Stream::minor("v1.30"), &url, 3).unwrap();
        let text = render_stream_transfer(&name, &Stream::minor("v1.30"), &t);
        for line in [
            "Verify=yes",
            "Type=url-file",
            "Path=https://example.org/feed/kubernetes/",
            "MatchPattern=kubernetes-v1.30.@v-%a.raw",
            "Path=/opt/extensions/kubernetes",
            "CurrentSymlink=/etc/extensions/kubernetes.raw",
            "InstancesMax=3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        let back = Transfer::parse(&text, Path::new("kubernetes-v1.30.conf")).unwrap();
        assert_eq!(back, t);
        back.validate().unwrap();
    }
}
