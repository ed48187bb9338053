//! A VM's files in chunks, for migration: read skipping holes (`SEEK_DATA`/`SEEK_HOLE`, and
//! all-zero chunks), written into sparse files, each chunk and each whole file checked by
//! SHA-256; and the same skipping for a copy on one node ([`sparse_copy`]: disks into and
//! out of snapshots, images into new VMs). Blocking IO.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256 as Hasher};
use vmfleet_wire::fleet::{Sha256, VmFile};

use crate::HypervisorError;

/// How a file reads: where its data is, what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub size: u64,
    /// Bytes outside holes.
    pub data_bytes: u64,
    pub sha256: Sha256,
}

/// The SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> Sha256 {
    Sha256::from_digest(Hasher::digest(bytes).into())
}

/// The next byte at or after `from` that is not in a hole, or `None` when only holes remain.
fn next_data(f: &File, from: u64) -> std::io::Result<Option<u64>> {
    match rustix::fs::seek(f, SeekFrom::Data(from)) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        // A filesystem without SEEK_DATA: everything is data.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(from)),
        Err(e) => Err(e.into()),
    }
}

/// The end of the data run that starts at `from`.
fn next_hole(f: &File, from: u64, size: u64) -> std::io::Result<u64> {
    match rustix::fs::seek(f, SeekFrom::Hole(from)) {
        Ok(at) => Ok(at.min(size)),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(size),
        Err(e) => Err(e.into()),
    }
}

/// The block of a file's digest.
const BLOCK: u64 = 64 * 1024;

/// Size, data bytes and digest of the whole file. The digest is SHA-256 over the offset
/// (8 bytes, little-endian) and the bytes of every 64 KiB block that is not all zeros, in
/// order: the file's content, whatever of it is a hole and whatever written zeros, so a
/// sparse copy and its original agree, and holes are skipped, not read.
pub fn describe(path: &Path) -> Result<Described, HypervisorError> {
    let f = File::open(path).map_err(HypervisorError::io(path))?;
    let size = f.metadata().map_err(HypervisorError::io(path))?.len();
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut data_bytes = 0u64;
    // The first block not hashed yet: two data runs may share a block.
    let mut next_block = 0u64;
    let mut at = 0u64;
    let walked = (|| {
        while at < size {
            let Some(data) = next_data(&f, at)? else {
                break;
            };
            if data >= size {
                break;
            }
            let end = next_hole(&f, data, size)?;
            data_bytes += end - data;
            let mut block = (data / BLOCK).max(next_block);
            while block * BLOCK < end {
                let start = block * BLOCK;
                let k = BLOCK.min(size - start) as usize;
                f.read_exact_at(&mut buf[..k], start)?;
                if buf[..k].iter().any(|&b| b != 0) {
                    hasher.update(start.to_le_bytes());
                    hasher.update(&buf[..k]);
                }
                block += 1;
            }
            next_block = block;
            at = end.max(data + 1);
        }
        Ok::<(), std::io::Error>(())
    })();
    walked.map_err(HypervisorError::io(path))?;
    hasher.update(size.to_le_bytes());
    Ok(Described {
        size,
        data_bytes,
        sha256: Sha256::from_digest(hasher.finalize().into()),
    })
}

/// What a read found: the data at `offset` (empty: zeros until `next`) and where to read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRead {
    pub offset: u64,
    pub data: Vec<u8>,
    pub next: u64,
}

/// Up to `len` bytes of `path` from the first data at or after `offset` (holes skipped), not
/// past the end of that data run; all-zero data comes back empty.
pub fn read_chunk(path: &Path, offset: u64, len: u64) -> Result<ChunkRead, HypervisorError> {
    let io = HypervisorError::io(path);
    let f = File::open(path).map_err(HypervisorError::io(path))?;
    let size = f.metadata().map_err(HypervisorError::io(path))?.len();
    let done = ChunkRead {
        offset: size,
        data: Vec::new(),
        next: size,
    };
    if offset >= size {
        return Ok(done);
    }
    let Some(start) = next_data(&f, offset).map_err(HypervisorError::io(path))? else {
        return Ok(done);
    };
    if start >= size {
        return Ok(done);
    }
    let end = next_hole(&f, start, size)
        .map_err(HypervisorError::io(path))?
        .min(start.saturating_add(len));
    let mut data = vec![0u8; (end - start) as usize];
    f.read_exact_at(&mut data, start).map_err(io)?;
    if data.iter().all(|&b| b == 0) {
        data.clear();
    }
    Ok(ChunkRead {
        offset: start,
        data,
        next: end,
    })
}

/// How much [`sparse_copy`] reads at a time.
const COPY_CHUNK: u64 = 1024 * 1024;

/// Copies `from` into `to` (created, or emptied first) as a file of the same size and
/// content whose holes, and runs of zeros [`COPY_CHUNK`] long, stay holes: a copy of a
/// sparse disk takes only what the disk holds. Returns the bytes written.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<u64, HypervisorError> {
    let src = File::open(from).map_err(HypervisorError::io(from))?;
    let size = src.metadata().map_err(HypervisorError::io(from))?.len();
    let dst = File::create(to).map_err(HypervisorError::io(to))?;
    dst.set_len(size).map_err(HypervisorError::io(to))?;
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let (mut at, mut written) = (0u64, 0u64);
    while at < size {
        let Some(start) = next_data(&src, at).map_err(HypervisorError::io(from))? else {
            break;
        };
        if start >= size {
            break;
        }
        let end = next_hole(&src, start, size).map_err(HypervisorError::io(from))?;
        let mut pos = start;
        while pos < end {
            let k = (end - pos).min(COPY_CHUNK) as usize;
            src.read_exact_at(&mut buf[..k], pos)
                .map_err(HypervisorError::io(from))?;
            if buf[..k].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..k], pos)
                    .map_err(HypervisorError::io(to))?;
                written += k as u64;
            }
            pos += k as u64;
        }
        at = end;
    }
    Ok(written)
}

/// Creates `path` as a sparse file of `size` bytes (all zeros, no data).
pub fn create_sparse(path: &Path, size: u64) -> Result<(), HypervisorError> {
    let f = File::create(path).map_err(HypervisorError::io(path))?;
    f.set_len(size).map_err(HypervisorError::io(path))
}

/// Writes `data` at `offset` of `path` after checking it against `sha256`.
pub fn write_chunk(
    path: &Path,
    file: VmFile,
    offset: u64,
    data: &[u8],
    sha256: &Sha256,
) -> Result<(), HypervisorError> {
    if digest(data) != *sha256 {
        return Err(HypervisorError::InvalidSpec(format!(
            "the chunk of {file} at {offset} does not match its SHA-256"
        )));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(HypervisorError::io(path))?;
    f.write_all_at(data, offset)
        .map_err(HypervisorError::io(path))
}

/// Whether `path` holds exactly `want` (size and SHA-256).
pub fn verify(path: &Path, file: VmFile, size: u64, want: &Sha256) -> Result<(), HypervisorError> {
    let got = describe(path)?;
    if got.size != size || got.sha256 != *want {
        return Err(HypervisorError::InvalidSpec(format!(
            "{file} arrived damaged: {} bytes with SHA-256 {}, expected {size} bytes with {want}",
            got.size, got.sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// Copies `from` into a fresh sparse `to` the way a migration does: chunk by chunk, each
    /// checked, holes and zero runs never sent. Returns the bytes sent.
    fn copy(from: &Path, to: &Path, chunk: u64) -> u64 {
        let d = describe(from).unwrap();
        create_sparse(to, d.size).unwrap();
        let (mut at, mut sent) = (0, 0);
        while at < d.size {
            let r = read_chunk(from, at, chunk).unwrap();
            if !r.data.is_empty() {
                write_chunk(to, VmFile::Root, r.offset, &r.data, &digest(&r.data)).unwrap();
                sent += r.data.len() as u64;
            }
            assert!(r.next > at, "no progress at {at}");
            at = r.next;
        }
        verify(to, VmFile::Root, d.size, &d.sha256).unwrap();
        sent
    }

    #[test]
    fn a_local_copy_keeps_content_and_leaves_holes_and_zeros_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        let size = 64 << 20;
        f.set_len(size).unwrap();
        f.write_all_at(&[7u8; 3000], 5).unwrap();
        f.write_all_at(&vec![0u8; 8 << 20], 16 << 20).unwrap(); // written zeros
        f.write_all_at(b"tail", size - 4).unwrap();
        drop(f);
        // Onto an existing file with other content: it is replaced.
        let dst = dir.path().join("dst");
        std::fs::write(&dst, vec![9u8; 100 << 10]).unwrap();
        let written = sparse_copy(&src, &dst).unwrap();
        // The blocks around the two bits of data, not the zeros nor the holes.
        assert!(
            (3004..=128 * 1024).contains(&written),
            "{written} bytes written"
        );
        let (d, s) = (describe(&dst).unwrap(), describe(&src).unwrap());
        assert_eq!((d.size, d.sha256), (s.size, s.sha256));
        assert!(
            d.data_bytes < s.data_bytes,
            "the written zeros became a hole"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(
            allocated_bytes(&dst) <= 256 * 1024,
            "{} bytes allocated",
            allocated_bytes(&dst)
        );
        // An empty file copies as an empty file.
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert_eq!(sparse_copy(&empty, &dst).unwrap(), 0);
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 0);
    }

    #[test]
    fn a_sparse_copy_keeps_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(256 << 20).unwrap();
        // Data at the start, in the middle (not chunk-aligned), a written run of zeros, and
        // the very last byte.
        f.write_all_at(&[7u8; 3 << 20], 0).unwrap();
        f.write_all_at(b"marker in the middle", (100 << 20) + 12345)
            .unwrap();
        f.write_all_at(&vec![0u8; 2 << 20], 150 << 20).unwrap();
        f.write_all_at(b"!", (256 << 20) - 1).unwrap();
        drop(f);
        let d = describe(&src).unwrap();
        assert_eq!(d.size, 256 << 20);
        assert!(d.data_bytes < 16 << 20, "{d:?}");

        let dst = dir.path().join("dst");
        let sent = copy(&src, &dst, 512 * 1024);
        assert!(sent < (3 << 20) + (1 << 20), "sent {sent}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(
            allocated_bytes(&dst) < 16 << 20,
            "the copy is not sparse: {} bytes allocated",
            allocated_bytes(&dst)
        );
    }

    #[test]
    fn a_damaged_chunk_or_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        create_sparse(&p, 1024).unwrap();
        let good = digest(b"hello");
        assert!(write_chunk(&p, VmFile::Root, 0, b"hellp", &good).is_err());
        write_chunk(&p, VmFile::Root, 0, b"hello", &good).unwrap();
        let d = describe(&p).unwrap();
        verify(&p, VmFile::Root, 1024, &d.sha256).unwrap();
        assert!(verify(&p, VmFile::Root, 1024, &good).is_err());
        assert!(verify(&p, VmFile::Root, 1025, &d.sha256).is_err());
    }

    #[test]
    fn a_hole_and_written_zeros_have_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        create_sparse(&a, 8 << 20).unwrap();
        std::fs::write(&b, vec![0u8; 8 << 20]).unwrap();
        for p in [&a, &b] {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.write_all_at(b"same", 3 << 20).unwrap();
        }
        let (da, db) = (describe(&a).unwrap(), describe(&b).unwrap());
        assert_eq!(da.sha256, db.sha256);
        assert!(da.data_bytes < db.data_bytes);
        // One byte elsewhere is another file.
        let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all_at(b"x", 5 << 20).unwrap();
        assert_ne!(describe(&b).unwrap().sha256, da.sha256);
    }

    #[test]
    fn reads_past_the_end_or_in_a_trailing_hole_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        create_sparse(&p, 10 << 20).unwrap();
        let r = read_chunk(&p, 0, 4096).unwrap();
        assert_eq!((r.data.len(), r.next), (0, 10 << 20));
        let r = read_chunk(&p, 20 << 20, 4096).unwrap();
        assert_eq!(r.next, 10 << 20);
    }
}
