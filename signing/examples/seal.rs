//! Seals a filesystem image by hand, for manual checks with real tools.
//!
//! `seal ddi FS_IMAGE OUT.raw ARCH [KEY CERT]` — writes a DDI (signed with KEY/CERT if given)
//! `seal sidecar IMAGE.raw [KEY CERT]`        — writes IMAGE.verity/.roothash/.roothash.p7s
//! `seal read DDI`                             — prints what the reader finds

use std::path::Path;
use std::process::ExitCode;

use signing::ddi::{read_ddi_file, write_ddi, DdiOptions};
use signing::sidecar::write_sidecar;
use signing::SigningKey;

fn key(args: &[String]) -> Result<Option<SigningKey>, String> {
    match args {
        [] => Ok(None),
        [k, c] => SigningKey::from_files(Path::new(k), Path::new(c), None)
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Err("give both KEY and CERT, or neither".into()),
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, fs, out, arch, rest @ ..] if cmd == "ddi" => {
            let arch = arch.parse().map_err(|e| format!("{e}"))?;
            let key = key(rest)?;
            let sealed = write_ddi(
                Path::new(fs),
                Path::new(out),
                &DdiOptions {
                    arch,
                    key: key.as_ref(),
                    verity: None,
                },
            )
            .map_err(|e| e.to_string())?;
            println!("{sealed:#?}");
        }
        [cmd, image, rest @ ..] if cmd == "sidecar" => {
            let key = key(rest)?;
            let sealed = write_sidecar(Path::new(image), key.as_ref(), None).map_err(|e| e.to_string())?;
            println!("{sealed:#?}");
        }
        [cmd, ddi] if cmd == "read" => {
            println!("{:#?}", read_ddi_file(Path::new(ddi)).map_err(|e| e.to_string())?);
        }
        _ => return Err("usage: seal ddi FS OUT ARCH [KEY CERT] | seal sidecar IMAGE [KEY CERT] | seal read DDI".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seal: {e}");
            ExitCode::FAILURE
        }
    }
}
