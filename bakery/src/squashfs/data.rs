//! File data: listing the regular files in reading order, finding
//! duplicates, planning where every block and fragment goes, and the
//! parallel pipeline that reads, compresses and writes them in plan order.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use super::codec::Codec;
use super::layout::{Sink, DATA_UNCOMPRESSED};
use super::{Resolved, SquashfsError, SquashfsStats};
use crate::tree::{DirNode, FileContent, Node, StagedTree};

/// Where a file's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
}

/// A regular file of the tree, in the order the image stores file data
/// (sorted depth-first, each directory's entries in name order).
pub(crate) struct SourceFile<'a> {
    pub src: Src<'a>,
    pub size: u64,
    /// Path inside the image, for error messages.
    pub image_path: String,
}

impl SourceFile<'_> {
    fn disk_path(&self) -> &Path {
        match self.src {
            Src::Path(p) => p,
            Src::Bytes(_) => Path::new("<generated content>"),
        }
    }

    fn read_error(&self, source: io::Error) -> SquashfsError {
        SquashfsError::Read {
            path: self.disk_path().to_owned(),
            image_path: self.image_path.clone(),
            source,
        }
    }

    fn changed(&self) -> SquashfsError {
        SquashfsError::FileChanged {
            path: self.disk_path().to_owned(),
            image_path: self.image_path.clone(),
            expected: self.size,
        }
    }

    /// Opens the on-disk source without following symlinks and without
    /// blocking on FIFOs, and checks it is still a regular file.
    fn open(&self, path: &Path) -> Result<File, SquashfsError> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| self.read_error(e))?;
        let md = f.metadata().map_err(|e| self.read_error(e))?;
        if !md.file_type().is_file() {
            return Err(SquashfsError::NotRegularFile {
                path: path.to_owned(),
                image_path: self.image_path.clone(),
            });
        }
        Ok(f)
    }
}

/// Lists the tree's regular files in data order and records their sizes;
/// checks symlink targets on the way, so bad input fails before any work.
pub(crate) fn collect_files(tree: &StagedTree) -> Result<Vec<SourceFile<'_>>, SquashfsError> {
    let mut files = Vec::new();
    let mut path = String::new();
    collect_dir(&tree.root, &mut path, &mut files)?;
    Ok(files)
}

fn collect_dir<'a>(
    dir: &'a DirNode,
    path: &mut String,
    files: &mut Vec<SourceFile<'a>>,
) -> Result<(), SquashfsError> {
    for (name, node) in &dir.entries {
        let len = path.len();
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&name.to_string());
        match node {
            Node::Dir(d) => collect_dir(d, path, files)?,
            Node::File(f) => {
                let (src, size) = match &f.content {
                    FileContent::Bytes(b) => (Src::Bytes(b), b.len() as u64),
                    FileContent::Path(p) => {
                        let md = std::fs::symlink_metadata(p).map_err(|e| SquashfsError::Read {
                            path: p.clone(),
                            image_path: path.clone(),
                            source: e,
                        })?;
                        if !md.file_type().is_file() {
                            return Err(SquashfsError::NotRegularFile {
                                path: p.clone(),
                                image_path: path.clone(),
                            });
                        }
                        (Src::Path(p), md.len())
                    }
                };
                files.push(SourceFile {
                    src,
                    size,
                    image_path: path.clone(),
                });
            }
            Node::Symlink(s) => check_symlink(&s.target, path)?,
        }
        path.truncate(len);
    }
    Ok(())
}

/// Longest symlink target the kernel accepts (`PATH_MAX` less the NUL).
const MAX_SYMLINK_TARGET: usize = 4095;

fn check_symlink(target: &[u8], image_path: &str) -> Result<(), SquashfsError> {
    let reason = if target.is_empty() {
        "the target is empty"
    } else if target.len() > MAX_SYMLINK_TARGET {
        "the target is longer than 4095 bytes"
    } else if target.contains(&0) {
        "the target contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(SquashfsError::SymlinkTarget {
        image_path: image_path.to_owned(),
        reason,
    })
}

/// Where one file's data lives.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FilePlan {
    /// Index of its first block job; meaningful when `blocks > 0`.
    pub first_job: usize,
    pub blocks: u32,
    /// Fragment block index and byte offset inside it.
    pub fragment: Option<(u32, u32)>,
}

/// A unit of work for a compression thread.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// One block of one file.
    Block {
        file: usize,
        offset: u64,
        len: u32,
        last: bool,
    },
    /// A fragment block: the concatenation of `pieces`.
    Fragment { pieces: Range<usize>, len: u32 },
}

/// A small file (or tail) placed into a fragment block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub file: usize,
    pub at: u32,
    pub len: u32,
}

pub(crate) struct Plan {
    /// For every file, the first file with identical content (itself if none).
    pub canonical: Vec<usize>,
    /// For every file; only entries of canonical files are used.
    pub files: Vec<FilePlan>,
    pub jobs: Vec<Job>,
    pub pieces: Vec<Piece>,
}

impl Plan {
    pub fn job_len(&self, job: usize) -> u32 {
        match &self.jobs[job] {
            Job::Block { len, .. } | Job::Fragment { len, .. } => *len,
        }
    }
}

/// Decides everything about the data layout from sizes and content hashes,
/// before anything is compressed: this is what keeps the output independent
/// of thread scheduling.
pub(crate) fn plan(
    files: &[SourceFile<'_>],
    opts: &Resolved,
    stats: &mut SquashfsStats,
) -> Result<Plan, SquashfsError> {
    let canonical = find_duplicates(files, opts.threads)?;
    let bs = u64::from(opts.block_size);
    let mut plan = Plan {
        canonical,
        files: vec![FilePlan::default(); files.len()],
        jobs: Vec::new(),
        pieces: Vec::new(),
    };
    let mut frag_used = 0u32;
    let mut frag_first_piece = 0usize;
    let mut frag_index = 0u32;
    stats.files = files.len() as u64;
    for (i, f) in files.iter().enumerate() {
        stats.file_bytes += f.size;
        if plan.canonical[i] != i {
            stats.duplicate_files += 1;
            continue;
        }
        if f.size == 0 {
            continue;
        }
        if f.size < bs {
            // Whole file into a fragment block, like mksquashfs: start a new
            // fragment block when this one does not fit any more.
            let len = f.size as u32;
            if u64::from(frag_used) + u64::from(len) > bs {
                plan.jobs.push(Job::Fragment {
                    pieces: frag_first_piece..plan.pieces.len(),
                    len: frag_used,
                });
                frag_index = frag_index
                    .checked_add(1)
                    .ok_or(SquashfsError::TooLarge("more than 2^32 fragment blocks"))?;
                frag_used = 0;
                frag_first_piece = plan.pieces.len();
            }
            plan.pieces.push(Piece {
                file: i,
                at: frag_used,
                len,
            });
            plan.files[i].fragment = Some((frag_index, frag_used));
            frag_used += len;
        } else {
            // Files of a block or more: whole blocks, the last one short
            // (mksquashfs' default, no tail-end packing).
            let blocks = f.size.div_ceil(bs);
            let blocks = u32::try_from(blocks)
                .map_err(|_| SquashfsError::TooLarge("a file with more than 2^32 blocks"))?;
            plan.files[i].first_job = plan.jobs.len();
            plan.files[i].blocks = blocks;
            for b in 0..u64::from(blocks) {
                let offset = b * bs;
                plan.jobs.push(Job::Block {
                    file: i,
                    offset,
                    len: (f.size - offset).min(bs) as u32,
                    last: b + 1 == u64::from(blocks),
                });
            }
        }
    }
    if frag_used > 0 {
        plan.jobs.push(Job::Fragment {
            pieces: frag_first_piece..plan.pieces.len(),
            len: frag_used,
        });
    }
    Ok(plan)
}

/// A file index and its content digest (or why it could not be read).
type HashResult = (usize, Result<[u8; 32], SquashfsError>);

/// Maps every file to the first file with the same content. Only files
/// whose size occurs more than once are hashed (SHA-256, in parallel).
fn find_duplicates(files: &[SourceFile<'_>], threads: usize) -> Result<Vec<usize>, SquashfsError> {
    let mut by_size: HashMap<u64, u32> = HashMap::new();
    for f in files.iter().filter(|f| f.size > 0) {
        *by_size.entry(f.size).or_default() += 1;
    }
    let candidates: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].size > 0 && by_size[&files[i].size] > 1)
        .collect();
    let mut digests: Vec<Option<[u8; 32]>> = vec![None; files.len()];
    if !candidates.is_empty() {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<HashResult>> = Mutex::new(Vec::new());
        std::thread::scope(|s| -> Result<(), SquashfsError> {
            for _ in 0..threads.min(candidates.len()) {
                std::thread::Builder::new()
                    .name("squashfs-hash".into())
                    .spawn_scoped(s, || {
                        let mut buf = vec![0u8; 1 << 18];
                        let mut local = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&i) = candidates.get(k) else { break };
                            let r = hash_file(&files[i], &mut buf);
                            let failed = r.is_err();
                            local.push((i, r));
                            if failed {
                                // Stop everyone early; the error is reported.
                                next.store(candidates.len(), Ordering::Relaxed);
                                break;
                            }
                        }
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(local);
                    })
                    .map_err(SquashfsError::Threads)?;
            }
            Ok(())
        })?;
        let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        results.sort_by_key(|(i, _)| *i);
        for (i, r) in results {
            digests[i] = Some(r?);
        }
    }
    let mut first: HashMap<(u64, [u8; 32]), usize> = HashMap::new();
    let canonical = (0..files.len())
        .map(|i| match digests[i] {
            Some(d) => *first.entry((files[i].size, d)).or_insert(i),
            None => i,
        })
        .collect();
    Ok(canonical)
}

fn hash_file(f: &SourceFile<'_>, buf: &mut [u8]) -> Result<[u8; 32], SquashfsError> {
    let mut h = Sha256::new();
    let n = match f.src {
        Src::Bytes(b) => {
            h.update(b);
            b.len() as u64
        }
        Src::Path(p) => {
            let mut file = f.open(p)?;
            let mut n = 0u64;
            loop {
                let k = match file.read(buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(f.read_error(e)),
                };
                h.update(&buf[..k]);
                n += k as u64;
            }
            n
        }
    };
    if n != f.size {
        return Err(f.changed());
    }
    Ok(h.finalize().into())
}

/// Where the data ended up, for the inode table.
pub(crate) struct Placed {
    /// Per file: the image offset of its first block.
    pub block_start: Vec<u64>,
    /// Per job: the size field written into the file's block list (0 for a
    /// sparse block); unused for fragment jobs.
    pub job_size: Vec<u32>,
    pub fragments: Vec<FragmentPlaced>,
}

pub(crate) struct FragmentPlaced {
    pub start: u64,
    pub size_field: u32,
}

/// A finished job.
struct Done {
    /// Compressed (or raw) bytes to write; empty for a sparse block.
    data: Vec<u8>,
    size_field: u32,
}

struct Window {
    next: usize,
    written: usize,
    abort: bool,
}

/// Reads, compresses and writes all jobs of `plan`: `opts.threads` workers
/// compress, this thread writes in plan order. At most `4 × threads + 2`
/// jobs are in flight, which bounds memory.
pub(crate) fn write_data(
    files: &[SourceFile<'_>],
    plan: &Plan,
    opts: &Resolved,
    sink: &mut Sink<'_>,
    stats: &mut SquashfsStats,
) -> Result<Placed, SquashfsError> {
    let mut placed = Placed {
        block_start: vec![0; files.len()],
        job_size: vec![0; plan.jobs.len()],
        fragments: Vec::new(),
    };
    if plan.jobs.is_empty() {
        return Ok(placed);
    }
    let threads = opts.threads.clamp(1, plan.jobs.len());
    let window_len = 4 * threads + 2;
    let codecs = (0..threads)
        .map(|_| Codec::new(opts))
        .collect::<Result<Vec<_>, _>>()?;
    let window = Mutex::new(Window {
        next: 0,
        written: 0,
        abort: false,
    });
    let wake = Condvar::new();
    let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let block_size = opts.block_size as usize;

    let mut failure: Option<(usize, SquashfsError)> = None;
    std::thread::scope(|s| -> Result<(), SquashfsError> {
        let (tx, rx) = mpsc::channel::<(usize, Result<Done, SquashfsError>)>();
        for codec in codecs {
            let tx = tx.clone();
            let (window, wake, spare) = (&window, &wake, &spare);
            let spawned = std::thread::Builder::new()
                .name("squashfs-compress".into())
                .spawn_scoped(s, move || {
                    worker(
                        files, plan, codec, block_size, window_len, window, wake, spare, tx,
                    )
                });
            if let Err(e) = spawned {
                lock(window).abort = true;
                wake.notify_all();
                return Err(SquashfsError::Threads(e));
            }
        }
        drop(tx);

        let mut ready: BTreeMap<usize, Done> = BTreeMap::new();
        let mut next_write = 0usize;
        for (i, result) in rx {
            match result {
                Ok(done) => {
                    ready.insert(i, done);
                }
                Err(e) => {
                    if failure.as_ref().is_none_or(|(j, _)| i < *j) {
                        failure = Some((i, e));
                    }
                    lock(&window).abort = true;
                    wake.notify_all();
                }
            }
            if failure.is_some() {
                continue;
            }
            while let Some(done) = ready.remove(&next_write) {
                if let Err(e) = place(plan, next_write, &done, sink, &mut placed, stats) {
                    failure = Some((next_write, e));
                    lock(&window).abort = true;
                    break;
                }
                next_write += 1;
                let mut buf = done.data;
                buf.clear();
                lock(&spare).push(buf);
            }
            lock(&window).written = next_write;
            wake.notify_all();
        }
        Ok(())
    })?;
    if let Some((_, e)) = failure {
        return Err(e);
    }
    Ok(placed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts one finished job on disk and records where it went.
fn place(
    plan: &Plan,
    job: usize,
    done: &Done,
    sink: &mut Sink<'_>,
    placed: &mut Placed,
    stats: &mut SquashfsStats,
) -> Result<(), SquashfsError> {
    let pos = sink.position();
    match &plan.jobs[job] {
        Job::Block { file, .. } => {
            if plan.files[*file].first_job == job {
                placed.block_start[*file] = pos;
            }
            placed.job_size[job] = done.size_field;
            if done.size_field == 0 {
                stats.sparse_blocks += 1;
            } else {
                stats.data_blocks += 1;
            }
        }
        Job::Fragment { .. } => {
            placed.fragments.push(FragmentPlaced {
                start: pos,
                size_field: done.size_field,
            });
            stats.fragment_blocks += 1;
        }
    }
    if done.size_field & DATA_UNCOMPRESSED != 0 {
        stats.uncompressed_blocks += 1;
    }
    sink.write(&done.data)
}

#[allow(clippy::too_many_arguments)]
fn worker(
    files: &[SourceFile<'_>],
    plan: &Plan,
    mut codec: Codec,
    block_size: usize,
    window_len: usize,
    window: &Mutex<Window>,
    wake: &Condvar,
    spare: &Mutex<Vec<Vec<u8>>>,
    tx: mpsc::Sender<(usize, Result<Done, SquashfsError>)>,
) {
    let mut input = Vec::with_capacity(block_size + 1);
    let mut reader = Reader::new(files);
    loop {
        let job = {
            let mut w = lock(window);
            loop {
                if w.abort || w.next >= plan.jobs.len() {
                    return;
                }
                if w.next < w.written + window_len {
                    break;
                }
                w = wake.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            w.next += 1;
            w.next - 1
        };
        let out = lock(spare).pop().unwrap_or_default();
        let result = run_job(plan, job, &mut reader, &mut codec, &mut input, out);
        if tx.send((job, result)).is_err() {
            return;
        }
    }
}

fn run_job(
    plan: &Plan,
    job: usize,
    reader: &mut Reader<'_, '_>,
    codec: &mut Codec,
    input: &mut Vec<u8>,
    mut out: Vec<u8>,
) -> Result<Done, SquashfsError> {
    match &plan.jobs[job] {
        Job::Block {
            file,
            offset,
            len,
            last,
        } => {
            input.resize(*len as usize, 0);
            reader.read(*file, *offset, input, *last)?;
            if input.iter().all(|&b| b == 0) {
                out.clear();
                return Ok(Done {
                    data: out,
                    size_field: 0,
                });
            }
        }
        Job::Fragment { pieces, len } => {
            input.resize(*len as usize, 0);
            for p in &plan.pieces[pieces.clone()] {
                let at = p.at as usize;
                reader.read(p.file, 0, &mut input[at..at + p.len as usize], true)?;
            }
        }
    }
    let size_field = if codec.compress(input, &mut out)? {
        out.len() as u32
    } else {
        out.clear();
        out.extend_from_slice(input);
        input.len() as u32 | DATA_UNCOMPRESSED
    };
    Ok(Done {
        data: out,
        size_field,
    })
}

/// Reads file ranges, keeping the last opened file open (consecutive block
/// jobs usually come from the same file).
struct Reader<'f, 'a> {
    files: &'f [SourceFile<'a>],
    open: Option<(usize, File)>,
}

impl<'f, 'a> Reader<'f, 'a> {
    fn new(files: &'f [SourceFile<'a>]) -> Self {
        Reader { files, open: None }
    }

    /// Fills `buf` from `offset` of file `idx`. With `last`, also checks that
    /// the file ends right after `buf`.
    fn read(
        &mut self,
        idx: usize,
        offset: u64,
        buf: &mut [u8],
        last: bool,
    ) -> Result<(), SquashfsError> {
        let f = &self.files[idx];
        match f.src {
            Src::Bytes(b) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(buf.len())?));
                match range.and_then(|r| b.get(r)) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(f.changed()),
                }
            }
            Src::Path(p) => {
                let file = match &mut self.open {
                    Some((i, file)) if *i == idx => file,
                    slot => {
                        *slot = None;
                        &slot.insert((idx, f.open(p)?)).1
                    }
                };
                match file.read_exact_at(buf, offset) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(f.changed()),
                    Err(e) => return Err(f.read_error(e)),
                }
                if last {
                    let mut extra = [0u8; 1];
                    let end = offset + buf.len() as u64;
                    match file.read_at(&mut extra, end) {
                        Ok(0) => {}
                        Ok(_) => return Err(f.changed()),
                        Err(e) => return Err(f.read_error(e)),
                    }
                }
                Ok(())
            }
        }
    }
}
