//! Benchmark helper for `bench/seal/run.sh`: seals an existing filesystem
//! image the way `bakery build` does ([`bakery::seal::seal`] on an
//! [`bakery::seal::FsImage`] in a staging directory) and prints the
//! seconds the sealing alone took, then the root hash. The outputs are
//! moved into OUT_DIR as `bench-1-x86-64.*`.
//!
//! usage: seal_image FS_IMAGE OUT_DIR ddi|sidecar|bare [KEY [CERT]]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bakery::seal::{seal, KeyArgs, SealFormat, SealOptions, Staging};
use sysupdate::Arch;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: seal_image FS_IMAGE OUT_DIR ddi|sidecar|bare [KEY [CERT]]");
    }
    let fs_image = PathBuf::from(&args[0]);
    let out = PathBuf::from(&args[1]);
    let format: SealFormat = args[2].parse()?;
    let key = KeyArgs {
        key: args.get(3).map(Into::into),
        cert: args.get(4).map(Into::into),
        passphrase_file: None,
    }
    .load()?;
    std::fs::create_dir_all(&out)?;
    let staging = Staging::new(&out)?;
    let (image, mut file) = staging.create_fs_image("bench-1-x86-64", Arch::X86_64)?;
    let mut src = std::fs::File::open(&fs_image).context("opening the image")?;
    std::io::copy(&mut src, &mut file)?;
    file.sync_all()?;
    drop(file);
    let plan = SealOptions {
        format: Some(format),
        key: key.map(Arc::new),
    }
    .plan();
    let t = Instant::now();
    let sealed = seal(image, &plan)?;
    let secs = t.elapsed().as_secs_f64();
    for f in sealed.files() {
        std::fs::rename(&f.staged, &f.path)?;
    }
    println!("{secs:.3}");
    if let Some(r) = sealed.root_hash {
        println!("{r}");
    }
    Ok(())
}
