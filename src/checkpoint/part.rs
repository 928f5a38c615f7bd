//! Part files: what one worker writes into a checkpoint.
//!
//! ```text
//! body bytes · header bytes · trailer (32 B):
//!   u64 body length · u64 header length · u32 CRC-32 of everything before it and the two lengths ·
//!   u32 state-layout version · 8 B magic "FWCKPT01"
//! ```
//!
//! A part is written under a temporary name, synced, then renamed: a part file under its final name is
//! complete. The big series-state part is written by a background thread from page-aligned buffers with
//! `O_DIRECT` (filling the page cache costs about 2.6 s of CPU per GB on the project's VMs, which the two
//! workers would feel; BENCHMARKS.md), while the worker that produced it goes on with the next epoch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::{CheckpointError, LAYOUT_VERSION};
use crate::sources::chunks::{ALIGN, AlignedBuf, DirectReader};

const MAGIC: &[u8; 8] = b"FWCKPT01";
/// Bytes of the trailer.
pub const TRAILER: usize = 32;
/// Bytes per buffer handed to the background writer (a multiple of [`ALIGN`]).
const BUF: usize = 16 << 20;
const _: () = assert!(BUF % ALIGN == 0);
/// Buffers kept between checkpoints (384 MiB): a full-fleet part is gigabytes, but the writer keeps pace
/// with its producer, so a few dozen buffers are in flight at once; fresh ones would cost page faults
/// (the first full-fleet checkpoint took 2.2 s longer than an epoch without reuse, BENCHMARKS.md).
const POOL_MAX: usize = 24;

/// Written buffers, ready for the next part.
static POOL: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());

fn pooled() -> Option<AlignedBuf> {
    POOL.lock().ok().and_then(|mut p| p.pop())
}

fn to_pool(buf: AlignedBuf) {
    if let Ok(mut p) = POOL.lock()
        && p.len() < POOL_MAX
    {
        p.push(buf);
    }
}

/// A part as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartInfo {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes a small file whole and durably: a temporary name beside it, sync, rename, directory sync (the
/// checkpoint manifest, a trained model's weights).
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_name(path);
    let f = File::create(&tmp)?;
    f.write_all_at(bytes, 0)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Syncs a directory, so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn trailer(body: u64, header: u64, hasher: &mut crc32fast::Hasher) -> [u8; TRAILER] {
    let mut t = [0u8; TRAILER];
    t[0..8].copy_from_slice(&body.to_le_bytes());
    t[8..16].copy_from_slice(&header.to_le_bytes());
    hasher.update(&t[0..16]);
    let crc = hasher.clone().finalize();
    t[16..20].copy_from_slice(&crc.to_le_bytes());
    t[20..24].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    t[24..32].copy_from_slice(MAGIC);
    t
}

/// Writes a small part at once (temporary name, sync, rename, directory sync).
pub fn write_part(path: &Path, body: &[u8], header: &[u8]) -> Result<PartInfo, CheckpointError> {
    let tmp = tmp_name(path);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher.update(header);
    let t = trailer(body.len() as u64, header.len() as u64, &mut hasher);
    let f = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut at = 0u64;
    for bytes in [body, header, &t[..]] {
        f.write_all_at(bytes, at).map_err(io_err(&tmp))?;
        at += bytes.len() as u64;
    }
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(PartInfo {
        name: file_name(path),
        bytes: at,
        crc32: u32::from_le_bytes([t[16], t[17], t[18], t[19]]),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A part read back and verified: its body and header.
#[derive(Debug)]
pub struct ReadPart {
    pub body: Vec<u8>,
    pub header: Vec<u8>,
    pub info: PartInfo,
}

/// Reads a part and checks its trailer: magic, layout version, lengths and CRC.
pub fn read_part(path: &Path) -> Result<ReadPart, CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let mut bytes = read_file(path)?;
    if bytes.len() < TRAILER {
        return Err(corrupt(format!(
            "{} bytes, shorter than a trailer",
            bytes.len()
        )));
    }
    let t = bytes.split_off(bytes.len() - TRAILER);
    if &t[24..32] != MAGIC {
        return Err(corrupt("no part trailer (truncated?)".into()));
    }
    let version = u32::from_le_bytes([t[20], t[21], t[22], t[23]]);
    if version != LAYOUT_VERSION {
        return Err(CheckpointError::Version {
            path: path.display().to_string(),
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    let body_len = u64::from_le_bytes(t[0..8].try_into().unwrap_or_default());
    let header_len = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
    if body_len.checked_add(header_len) != Some(bytes.len() as u64) {
        return Err(corrupt(format!(
            "lengths {body_len} + {header_len} do not add up to {} bytes",
            bytes.len()
        )));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes);
    hasher.update(&t[0..16]);
    let crc = hasher.finalize();
    let stored = u32::from_le_bytes([t[16], t[17], t[18], t[19]]);
    if crc != stored {
        return Err(corrupt(format!(
            "CRC-32 {crc:08x} does not match the stored {stored:08x}"
        )));
    }
    let header = bytes.split_off(body_len as usize);
    Ok(ReadPart {
        body: bytes,
        header,
        info: PartInfo {
            name: file_name(path),
            bytes: body_len + header_len + TRAILER as u64,
            crc32: crc,
        },
    })
}

/// Reads a part's trailer only: its size and CRC as the manifest lists them.
pub fn part_info(path: &Path) -> Result<PartInfo, CheckpointError> {
    let f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let corrupt = |message: &str| CheckpointError::Corrupt {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    if len < TRAILER as u64 {
        return Err(corrupt("shorter than a trailer"));
    }
    let mut t = [0u8; TRAILER];
    f.read_exact_at(&mut t, len - TRAILER as u64)
        .map_err(io_err(path))?;
    if &t[24..32] != MAGIC {
        return Err(corrupt("no part trailer"));
    }
    Ok(PartInfo {
        name: file_name(path),
        bytes: len,
        crc32: u32::from_le_bytes([t[16], t[17], t[18], t[19]]),
    })
}

/// Reads a whole file, with `O_DIRECT` for the aligned bulk of a large one (page-cache reads of a
/// full-fleet checkpoint would cost seconds of CPU).
fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len() as usize;
    let mut reader = DirectReader::open(path, 64 << 20).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(len);
    let mut buf = AlignedBuf::new(BUF).map_err(io_err(path))?;
    while out.len() < len {
        // Whole aligned buffers: the last read comes back short at the end of the file.
        let n = reader
            .read_at(out.len() as u64, buf.as_mut_slice())
            .map_err(io_err(path))?;
        if n == 0 {
            return Err(CheckpointError::Corrupt {
                path: path.display().to_string(),
                message: format!("it ended at {} of {len} bytes while being read", out.len()),
            });
        }
        out.extend_from_slice(&buf.as_slice()[..n.min(len - out.len())]);
    }
    Ok(out)
}

enum Msg {
    Full(AlignedBuf),
    Last {
        buf: Option<AlignedBuf>,
        fill: usize,
        header: Vec<u8>,
    },
}

/// A part written by a background thread while its producer goes on: the producer appends body bytes
/// ([`PartWriter::push`]), then hands over the header ([`PartWriter::finish`]).
pub struct PartWriter {
    tx: Sender<Msg>,
    spare: Receiver<AlignedBuf>,
    buf: Option<AlignedBuf>,
    fill: usize,
    handle: JoinHandle<Result<PartInfo, CheckpointError>>,
    failed: bool,
}

impl PartWriter {
    /// Starts writing the part `path` (under a temporary name until it is complete).
    pub fn start(path: PathBuf) -> Result<PartWriter, CheckpointError> {
        let (tx, rx) = channel::<Msg>();
        let (spare_tx, spare) = channel::<AlignedBuf>();
        let handle = std::thread::Builder::new()
            .name("fleetwatch-ckpt".into())
            .spawn(move || write_loop(&path, rx, spare_tx))
            .map_err(|source| CheckpointError::Io {
                path: "checkpoint writer thread".into(),
                source,
            })?;
        Ok(PartWriter {
            tx,
            spare,
            buf: None,
            fill: 0,
            handle,
            failed: false,
        })
    }

    /// Appends body bytes.
    #[inline]
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.failed {
            let buf = match self.buf.as_mut() {
                Some(b) => b,
                None => {
                    let b = match self.spare.try_recv().ok().or_else(pooled) {
                        Some(b) => b,
                        None => match AlignedBuf::new(BUF) {
                            Ok(b) => b,
                            Err(_) => {
                                self.failed = true;
                                return;
                            }
                        },
                    };
                    self.fill = 0;
                    self.buf.insert(b)
                }
            };
            let n = (BUF - self.fill).min(bytes.len());
            buf.as_mut_slice()[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == BUF
                && let Some(full) = self.buf.take()
                && self.tx.send(Msg::Full(full)).is_err()
            {
                self.failed = true; // the writer stopped: `finish` reports why
            }
        }
    }

    /// Hands over the header; the part is complete (renamed to its final name) when the handle's thread
    /// returns.
    pub fn finish(mut self, header: Vec<u8>) -> JoinHandle<Result<PartInfo, CheckpointError>> {
        while let Ok(b) = self.spare.try_recv() {
            to_pool(b);
        }
        let _ = self.tx.send(Msg::Last {
            buf: self.buf.take(),
            fill: self.fill,
            header,
        });
        self.handle
    }
}

fn write_loop(
    path: &Path,
    rx: Receiver<Msg>,
    spare: Sender<AlignedBuf>,
) -> Result<PartInfo, CheckpointError> {
    let tmp = tmp_name(path);
    let plain = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut direct = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp)
            .ok()
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut at = 0u64;
    loop {
        let msg = rx.recv().map_err(|_| CheckpointError::Io {
            path: tmp.display().to_string(),
            source: io::Error::other("the worker writing this part stopped"),
        })?;
        match msg {
            Msg::Full(buf) => {
                let bytes = buf.as_slice();
                hasher.update(bytes);
                let mut written = false;
                if let Some(d) = &direct {
                    match d.write_all_at(bytes, at) {
                        Ok(()) => written = true,
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = None,
                        Err(e) => return Err(io_err(&tmp)(e)),
                    }
                }
                if !written {
                    plain.write_all_at(bytes, at).map_err(io_err(&tmp))?;
                }
                at += bytes.len() as u64;
                // Back to the producer for reuse (or to the pool once it has finished).
                if let Err(e) = spare.send(buf) {
                    to_pool(e.0);
                }
            }
            Msg::Last {
                mut buf,
                fill,
                header,
            } => {
                let body_tail = buf.as_ref().map(|b| &b.as_slice()[..fill]).unwrap_or(&[]);
                hasher.update(body_tail);
                hasher.update(&header);
                let body_len = at + body_tail.len() as u64;
                let t = trailer(body_len, header.len() as u64, &mut hasher);
                let mut end = at;
                for bytes in [body_tail, &header[..], &t[..]] {
                    plain.write_all_at(bytes, end).map_err(io_err(&tmp))?;
                    end += bytes.len() as u64;
                }
                plain.sync_all().map_err(io_err(&tmp))?;
                if let Some(b) = buf.take() {
                    to_pool(b);
                }
                drop(direct);
                drop(plain);
                std::fs::rename(&tmp, path).map_err(io_err(path))?;
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
                return Ok(PartInfo {
                    name: file_name(path),
                    bytes: end,
                    crc32: u32::from_le_bytes([t[16], t[17], t[18], t[19]]),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_written_both_ways_read_back_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..(BUF * 2 + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        // Background writer, pushed in uneven pieces across buffer boundaries.
        let big = dir.path().join("big.part");
        let mut w = PartWriter::start(big.clone()).unwrap();
        for piece in body.chunks(1_176) {
            w.push(piece);
        }
        let info = w.finish(b"header!".to_vec()).join().unwrap().unwrap();
        assert_eq!(info.bytes, (body.len() + 7 + TRAILER) as u64);
        assert!(!tmp_name(&big).exists());
        let back = read_part(&big).unwrap();
        assert_eq!(back.body, body);
        assert_eq!(back.header, b"header!");
        assert_eq!(back.info, info);
        assert_eq!(part_info(&big).unwrap(), info);
        // At once: the same bytes give the same CRC.
        let small = dir.path().join("small.part");
        let info2 = write_part(&small, &body, b"header!").unwrap();
        assert_eq!(info2.crc32, info.crc32);
        // One flipped byte, a truncation, another layout version: each refused with its reason.
        let mut bytes = std::fs::read(&small).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&small, &bytes).unwrap();
        assert!(matches!(
            read_part(&small),
            Err(CheckpointError::Corrupt { message, .. }) if message.contains("CRC")
        ));
        bytes[1000] ^= 1;
        std::fs::write(&small, &bytes[..bytes.len() - 5]).unwrap();
        assert!(matches!(
            read_part(&small),
            Err(CheckpointError::Corrupt { .. })
        ));
        let n = bytes.len();
        bytes[n - 12..n - 8].copy_from_slice(&(LAYOUT_VERSION + 1).to_le_bytes());
        std::fs::write(&small, &bytes).unwrap();
        assert!(matches!(
            read_part(&small),
            Err(CheckpointError::Version { found, .. }) if found == LAYOUT_VERSION + 1
        ));
    }
}
