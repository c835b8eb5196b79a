//! The compressors as squashfs uses them: one [`Codec`] per thread (it keeps
//! its compression context between blocks), and the compressor options block
//! stored after the superblock where a reader needs it.

use flate2::{Compress, FlushCompress, Status};
use liblzma::stream::{Action, Check, Filters, LzmaOptions, Stream};

use super::{Compression, Resolved, SquashfsError};

/// The options block that follows the superblock, or `None` when the
/// defaults apply (then readers must not expect one). Matches what
/// `mksquashfs` writes for the same settings.
pub(crate) fn compressor_options(opts: &Resolved) -> Option<Vec<u8>> {
    match opts.compression {
        Compression::Zstd => {
            let level = opts.level.unwrap_or(15);
            (level != 15).then(|| (level as u32).to_le_bytes().to_vec())
        }
        Compression::Gzip => {
            let level = opts.level.unwrap_or(9);
            (level != 9).then(|| {
                let mut o = (level as u32).to_le_bytes().to_vec();
                o.extend_from_slice(&15u16.to_le_bytes()); // window bits
                o.extend_from_slice(&0u16.to_le_bytes()); // strategies: default
                o
            })
        }
        // The dictionary is the block size, which readers assume when there
        // are no options; the preset only matters to the encoder.
        Compression::Xz => None,
        // Readers (the kernel included) require LZ4 options: version 1
        // (LZ4_LEGACY), flags 0 (not high-compression).
        Compression::Lz4 => {
            let mut o = 1u32.to_le_bytes().to_vec();
            o.extend_from_slice(&0u32.to_le_bytes());
            Some(o)
        }
    }
}

enum Engine {
    Zstd(zstd::bulk::Compressor<'static>),
    Gzip(Compress),
    /// Preset and dictionary size (`LzmaOptions` itself is not `Send`).
    Xz {
        preset: u32,
        dict: u32,
    },
    Lz4,
}

/// A compressor for one thread.
pub(crate) struct Codec {
    compression: Compression,
    engine: Engine,
}

impl Codec {
    pub fn new(opts: &Resolved) -> Result<Self, SquashfsError> {
        let c = opts.compression;
        let fail = |message: String| SquashfsError::Compress {
            compression: c,
            message,
        };
        let engine = match c {
            Compression::Zstd => {
                let level = opts.level.unwrap_or(15);
                Engine::Zstd(zstd::bulk::Compressor::new(level).map_err(|e| fail(e.to_string()))?)
            }
            Compression::Gzip => {
                let level = opts.level.unwrap_or(9) as u32;
                Engine::Gzip(Compress::new(flate2::Compression::new(level), true))
            }
            Compression::Xz => {
                let preset = opts.level.unwrap_or(6) as u32;
                // Checked here so a bad preset fails before any work.
                LzmaOptions::new_preset(preset).map_err(|e| fail(e.to_string()))?;
                Engine::Xz {
                    preset,
                    dict: opts.block_size.max(8192),
                }
            }
            Compression::Lz4 => Engine::Lz4,
        };
        Ok(Codec {
            compression: c,
            engine,
        })
    }

    /// Compresses `src` into `dst` (replacing its contents). Returns `false`
    /// (and leaves `dst` unspecified) when the result would not be smaller
    /// than `src`; the caller then stores `src` as is.
    pub fn compress(&mut self, src: &[u8], dst: &mut Vec<u8>) -> Result<bool, SquashfsError> {
        dst.clear();
        if src.is_empty() {
            return Ok(false);
        }
        let c = self.compression;
        let fail = |message: String| SquashfsError::Compress {
            compression: c,
            message,
        };
        match &mut self.engine {
            Engine::Zstd(z) => {
                dst.reserve(zstd::zstd_safe::compress_bound(src.len()));
                z.compress_to_buffer(src, dst)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Engine::Gzip(z) => {
                z.reset();
                let start_in = z.total_in();
                // zlib's bound: a stored block costs 5 bytes per 16 KiB, plus
                // header and checksum.
                dst.reserve(src.len() + src.len() / 16_000 * 5 + 64);
                loop {
                    let consumed = (z.total_in() - start_in) as usize;
                    let status = z
                        .compress_vec(&src[consumed..], dst, FlushCompress::Finish)
                        .map_err(|e| fail(e.to_string()))?;
                    match status {
                        Status::StreamEnd => break,
                        Status::Ok | Status::BufError => dst.reserve(dst.capacity().max(4096)),
                    }
                }
            }
            Engine::Xz { preset, dict } => {
                let mut o = LzmaOptions::new_preset(*preset).map_err(|e| fail(e.to_string()))?;
                o.dict_size(*dict);
                let mut filters = Filters::new();
                filters.lzma2(&o);
                let mut s = Stream::new_stream_encoder(&filters, Check::Crc32)
                    .map_err(|e| fail(e.to_string()))?;
                dst.reserve(src.len() + src.len() / 64 + 128);
                loop {
                    let consumed = s.total_in() as usize;
                    let status = s
                        .process_vec(&src[consumed..], dst, Action::Finish)
                        .map_err(|e| fail(e.to_string()))?;
                    match status {
                        liblzma::stream::Status::StreamEnd => break,
                        _ => dst.reserve(dst.capacity().max(4096)),
                    }
                }
            }
            Engine::Lz4 => {
                dst.resize(lz4_flex::block::get_maximum_output_size(src.len()), 0);
                let n =
                    lz4_flex::block::compress_into(src, dst).map_err(|e| fail(e.to_string()))?;
                dst.truncate(n);
            }
        }
        Ok(dst.len() < src.len())
    }
}
