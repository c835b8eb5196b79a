//! Builds a dm-verity hash device like `veritysetup format`, for benchmarks
//! and manual comparison (`bench/verity/run.sh`).
//!
//! Usage: `verity_build [--timing] [--salt HEX] [--uuid UUID] DATA HASH_OUT`
//! Without `--salt`/`--uuid` they are derived from the data's content.
//! Prints the root hash.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use signing::verity::{build_tree, ByteRange, ReadAt, VerityParams};

fn run() -> Result<String, String> {
    let mut salt: Option<Vec<u8>> = None;
    let mut uuid: Option<[u8; 16]> = None;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut timing = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--salt" => {
                let v = args.next().ok_or("--salt needs a value")?;
                salt = Some(hex::decode(&v).map_err(|e| format!("--salt {v:?}: {e}"))?);
            }
            "--uuid" => {
                let v = args.next().ok_or("--uuid needs a value")?;
                let u = uuid::Uuid::parse_str(&v).map_err(|e| format!("--uuid {v:?}: {e}"))?;
                uuid = Some(*u.as_bytes());
            }
            "--timing" => timing = true,
            "-h" | "--help" => {
                return Err(
                    "usage: verity_build [--timing] [--salt HEX] [--uuid UUID] DATA HASH_OUT"
                        .into(),
                )
            }
            _ => paths.push(a.into()),
        }
    }
    let [data_path, hash_path] = <[PathBuf; 2]>::try_from(paths).map_err(|_| {
        "usage: verity_build [--timing] [--salt HEX] [--uuid UUID] DATA HASH_OUT".to_string()
    })?;
    let data = File::open(&data_path).map_err(|e| format!("{}: {e}", data_path.display()))?;
    let size = data
        .size()
        .map_err(|e| format!("{}: {e}", data_path.display()))?;
    let range = ByteRange::new(0, size);
    let params = match (salt, uuid) {
        (None, None) => {
            VerityParams::derive_from_content(&data, range).map_err(|e| e.to_string())?
        }
        (salt, uuid) => {
            let derived = VerityParams::derive(b"");
            VerityParams::new(
                salt.unwrap_or_else(|| derived.salt().to_vec()),
                uuid.unwrap_or(derived.uuid()),
                4096,
                4096,
            )
            .map_err(|e| e.to_string())?
        }
    };
    let t0 = std::time::Instant::now();
    let tree =
        build_tree(&data, range, &params).map_err(|e| format!("{}: {e}", data_path.display()))?;
    let t1 = std::time::Instant::now();
    tree.write_hash_device(&hash_path)
        .map_err(|e| e.to_string())?;
    if timing {
        eprintln!(
            "build_tree {:.3} s ({:.3} GB/s), write (with fsync) {:.3} s",
            (t1 - t0).as_secs_f64(),
            size as f64 / (t1 - t0).as_secs_f64() / 1e9,
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(tree.root_hash().to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(root) => {
            println!("{root}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("verity_build: {e}");
            ExitCode::FAILURE
        }
    }
}
