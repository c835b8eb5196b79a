//! Reading a DDI (GPT disk image with root, root-verity and
//! root-verity-sig partitions) for mounting: which byte range holds the
//! filesystem, where its hash tree is, and the root hash and signature.
//! The GPT and signature-partition parsing itself is `signing::ddi`'s.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use signing::ddi::RootHashSource;

use crate::discover::Format;
use crate::loopdev::Window;
use crate::opened::{Opened, Stage};
use crate::verify::{HashLocation, VerityMaterial};

/// Opens a DDI and picks the partitions for the host architecture.
pub fn open_ddi(path: &Path, file: File, size: u64) -> Result<Opened, (Stage, String)> {
    let host = crate::release::host_architecture();
    let arch: sysupdate::Arch = host.parse().map_err(|e| {
        (
            Stage::Format,
            format!("{}: cannot pick DDI partitions: {e}", path.display()),
        )
    })?;
    let layout = signing::ddi::read_ddi_for_arch(&file, arch).map_err(|e| {
        let stage = match e {
            signing::ddi::DdiError::RootHashMismatch { .. } => Stage::Signature,
            _ => Stage::Format,
        };
        (stage, format!("{} (DDI for {host}): {e}", path.display()))
    })?;
    let mut head = vec![0u8; 8192.min(layout.data.len as usize)];
    file.read_exact_at(&mut head, layout.data.offset)
        .map_err(|e| {
            (
                Stage::Format,
                format!("{}: reading the data partition: {e}", path.display()),
            )
        })?;
    let fs_format = Format::detect(&head);
    let root_hash_origin = match layout.root_hash_source {
        RootHashSource::SignaturePartition => {
            format!("{}: signature partition", path.display())
        }
        RootHashSource::PartitionUuids => format!(
            "{}: partition UUIDs (not authenticated: the image is unsigned)",
            path.display()
        ),
    };
    let sig_label = signing::ddi::partition_label(
        layout.arch,
        layout.designator,
        signing::ddi::PartitionRole::VeritySig,
    );
    let material = VerityMaterial {
        root_hash: layout.root_hash,
        root_hash_origin,
        data: layout.data,
        hash: HashLocation {
            file: path.to_path_buf(),
            range: layout.verity,
        },
        signature_origin: layout
            .signature
            .as_ref()
            .map(|_| format!("{}: partition {sig_label}", path.display())),
        signature: layout.signature.map(|s| s.signature.into_der()),
    };
    Ok(Opened {
        file,
        size,
        format: Format::Gpt,
        fs_format,
        data: Window {
            offset: layout.data.offset,
            size_limit: layout.data.len,
        },
        material: Some(material),
    })
}
