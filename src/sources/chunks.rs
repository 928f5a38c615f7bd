//! Reading a recorded topic once per process: one reader thread per file, large chunks shared by every
//! worker of the process.
//!
//! Every worker scans every line of a recorded topic (it keeps the lines of the partitions it owns), so the
//! bytes should come off the disk once and reach the workers without being copied again. A [`SharedFile`]
//! runs one thread that reads the file sequentially into [`CHUNK`]-byte buffers and keeps at most [`AHEAD`]
//! of them in front of the slowest worker; each worker walks the chunks with its own [`ChunkLines`] cursor,
//! and a chunk's buffer is reused once every worker has passed it.
//!
//! Files of at least [`DIRECT_MIN`] bytes are read with `O_DIRECT` where the file system allows it: the
//! bytes go from the disk into the reused buffers without passing through the page cache. On the project's
//! VMs, filling the page cache costs about 2.6 s of CPU per GB read (buffered `dd` of a cold file: 397 MB/s,
//! all of it system time; `O_DIRECT`: 1.2 GB/s and 0.05 s per GB), and a replay of a fleet at 2 M customers
//! reads 1 GB per epoch (BENCHMARKS.md). Smaller files (tests, demos, short replays) are read through the
//! page cache, where a repeated read is free.
//!
//! Workers never block on the reader: a chunk not read yet is [`Next::Wait`], and the source asks to be
//! scheduled again shortly. (Blocking would deadlock: a worker ahead of the others could wait for a chunk the
//! reader cannot read until the slowest worker moves on, while the slowest worker waits for the blocked one's
//! progress messages.)

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes per read and per chunk.
pub const CHUNK: usize = 32 << 20;
/// Chunks the reader keeps ready in front of the slowest worker (1.25 GiB: a little over one epoch of a
/// 2 M-customer fleet, so the next epoch is read from disk while the workers model the current one).
pub const AHEAD: usize = 40;
/// Files at least this large bypass the page cache.
pub const DIRECT_MIN: u64 = 256 << 20;
use super::MAX_LINE;

/// The alignment `O_DIRECT` needs for offsets, lengths and memory.
pub const ALIGN: usize = 4096;

/// A page-aligned byte buffer (`O_DIRECT` reads need aligned memory).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`&self` hands out `&[u8]` only).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> io::Result<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(p).ok_or_else(|| io::Error::other("out of memory"))?;
        Ok(AlignedBuf {
            ptr,
            len: len.max(ALIGN),
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised (zeroed at allocation) bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.len, ALIGN),
            )
        }
    }
}

/// One chunk of the file: `len` bytes read at file offset `index · CHUNK`.
pub struct Chunk {
    buf: AlignedBuf,
    len: usize,
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }
}

struct State {
    started: bool,
    /// Chunks `base ..` still needed by some worker.
    chunks: VecDeque<Arc<Chunk>>,
    base: u64,
    /// The reader has read the whole file (chunks `.. base + chunks.len()` are all there are).
    eof: bool,
    error: Option<String>,
    /// Per consumer: the index of the next chunk it needs (`u64::MAX`: gone).
    positions: Vec<u64>,
    /// Buffers of chunks every consumer has passed, for the reader to fill again.
    pool: Vec<AlignedBuf>,
}

/// A file read once for several consumers (the workers of a process).
pub struct SharedFile {
    path: PathBuf,
    /// Where reading starts (a resumed run): chunk `i` holds the bytes at `base_offset + i · chunk`.
    start: Start,
    chunk: usize,
    ahead: usize,
    direct_min: u64,
    state: Mutex<State>,
    room: Condvar,
}

impl SharedFile {
    /// Prepares `consumers` cursors over `path`; the reader thread starts with the first request for a
    /// chunk.
    pub fn new(path: &Path, consumers: usize) -> Arc<SharedFile> {
        Self::with_geometry(path, consumers, CHUNK, AHEAD, DIRECT_MIN)
    }

    /// As [`SharedFile::new`], reading from `start` (a resumed run) instead of the beginning.
    pub fn starting_at(path: &Path, consumers: usize, start: Start) -> Arc<SharedFile> {
        Self::build(path, consumers, CHUNK, AHEAD, DIRECT_MIN, start)
    }

    /// As [`SharedFile::new`] with another chunk size (a multiple of 4096), read-ahead and `O_DIRECT`
    /// threshold.
    pub fn with_geometry(
        path: &Path,
        consumers: usize,
        chunk: usize,
        ahead: usize,
        direct_min: u64,
    ) -> Arc<SharedFile> {
        Self::build(path, consumers, chunk, ahead, direct_min, Start::default())
    }

    fn build(
        path: &Path,
        consumers: usize,
        chunk: usize,
        ahead: usize,
        direct_min: u64,
        start: Start,
    ) -> Arc<SharedFile> {
        Arc::new(SharedFile {
            path: path.to_path_buf(),
            start,
            chunk: chunk.div_ceil(ALIGN).max(1) * ALIGN,
            ahead: ahead.max(1),
            direct_min,
            state: Mutex::new(State {
                started: false,
                chunks: VecDeque::new(),
                base: 0,
                eof: false,
                error: None,
                positions: vec![0; consumers.max(1)],
                pool: Vec::new(),
            }),
            room: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line cursor for consumer `slot` (each slot exactly once).
    pub fn lines(self: &Arc<Self>, slot: usize) -> ChunkLines {
        let base = self.base_offset();
        ChunkLines {
            file: Arc::clone(self),
            slot,
            chunk: None,
            next: 0,
            // The first chunk starts at the aligned offset below the start: skip to the start itself.
            pos: (self.start.offset - base) as usize,
            chunk_offset: base,
            consumed: self.start.offset,
            partial: Vec::new(),
            partial_len: 0,
            in_partial: false,
            line_no: self.start.line,
            ended: false,
        }
    }

    /// The file offset of chunk 0 (the start rounded down to the alignment `O_DIRECT` needs).
    fn base_offset(&self) -> u64 {
        self.start.offset / ALIGN as u64 * ALIGN as u64
    }

    /// Chunk `index` if it has been read, `NotYet` if not, `End` past the end of the file; `Err` when the
    /// reader failed. The first call starts the reader thread.
    fn get(self: &Arc<Self>, index: u64) -> io::Result<Fetch> {
        let mut st = self.lock();
        if !st.started {
            st.started = true;
            let me = Arc::clone(self);
            std::thread::Builder::new()
                .name("fleetwatch-read".into())
                .spawn(move || me.read_all())?;
        }
        if let Some(e) = &st.error {
            return Err(io::Error::other(e.clone()));
        }
        let have = st.base + st.chunks.len() as u64;
        if index < have {
            // (index ≥ base: a consumer only asks for chunks at or after its own position.)
            let i = index.saturating_sub(st.base) as usize;
            return Ok(Fetch::Chunk(Arc::clone(&st.chunks[i])));
        }
        Ok(if st.eof { Fetch::End } else { Fetch::NotYet })
    }

    /// Consumer `slot` needs nothing before chunk `next` any more.
    fn advance(&self, slot: usize, next: u64) {
        let mut st = self.lock();
        if let Some(p) = st.positions.get_mut(slot) {
            *p = (*p).max(next);
        }
        let low = st.positions.iter().copied().min().unwrap_or(u64::MAX);
        let mut freed = false;
        while st.base < low {
            let Some(c) = st.chunks.pop_front() else {
                break;
            };
            st.base += 1;
            freed = true;
            if let Ok(c) = Arc::try_unwrap(c)
                && !st.eof
            {
                st.pool.push(c.buf);
            }
        }
        if st.eof && st.chunks.is_empty() {
            st.pool.clear();
        }
        if freed || next == u64::MAX {
            self.room.notify_all();
        }
    }

    /// The reader thread: reads the file chunk by chunk, at most `AHEAD` chunks in front of the slowest
    /// consumer, until the end, an error, or every consumer is gone.
    fn read_all(&self) {
        if let Err(e) = self.read_loop() {
            let mut st = self.lock();
            st.error = Some(e.to_string());
        }
    }

    fn read_loop(&self) -> io::Result<()> {
        let mut reader = DirectReader::open(&self.path, self.direct_min)?;
        let mut offset = self.base_offset();
        loop {
            let buf = {
                let mut st = self.lock();
                loop {
                    let low = st.positions.iter().copied().min().unwrap_or(u64::MAX);
                    if low == u64::MAX {
                        return Ok(()); // every consumer is gone
                    }
                    let have = st.base + st.chunks.len() as u64;
                    if have < low.saturating_add(self.ahead as u64) {
                        break;
                    }
                    st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.pool.pop()
            };
            let mut buf = match buf {
                Some(b) => b,
                None => AlignedBuf::new(self.chunk)?,
            };
            let len = reader.read_at(offset, &mut buf.as_mut_slice()[..self.chunk])?;
            offset += len as u64;
            let mut st = self.lock();
            if len > 0 {
                st.chunks.push_back(Arc::new(Chunk { buf, len }));
            }
            if len < self.chunk {
                st.eof = true;
                return Ok(());
            }
        }
    }
}

enum Fetch {
    Chunk(Arc<Chunk>),
    NotYet,
    End,
}

/// Reads a file by offset, with `O_DIRECT` when the file is large and the file system supports it, falling
/// back to ordinary reads otherwise.
pub(crate) struct DirectReader {
    plain: File,
    direct: Option<File>,
}

impl DirectReader {
    pub(crate) fn open(path: &Path, direct_min: u64) -> io::Result<DirectReader> {
        let plain = File::open(path)?;
        let len = plain.metadata()?.len();
        let direct = if len >= direct_min {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok(DirectReader { plain, direct })
    }

    /// Fills `buf` from `offset` (fewer bytes only at the end of the file).
    pub(crate) fn read_at(&mut self, mut offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < buf.len() {
            let aligned = offset % ALIGN as u64 == 0 && filled % ALIGN == 0;
            let n = match (&self.direct, aligned) {
                (Some(d), true) => match d.read_at(&mut buf[filled..], offset) {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // The file system refuses direct reads after all: read through the page cache.
                        self.direct = None;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
                _ => match self.plain.read_at(&mut buf[filled..], offset) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
            };
            if n == 0 {
                break;
            }
            filled += n;
            offset += n as u64;
        }
        Ok(filled)
    }
}

/// The inputs of a run as the workers of one process share them: one [`SharedFile`] per input file, one
/// consumer slot per local worker.
#[derive(Clone)]
pub struct SharedInputs {
    files: Arc<Vec<Arc<SharedFile>>>,
    slot: usize,
}

impl SharedInputs {
    /// Readers for `paths`, to be walked by `consumers` workers (slots `0 .. consumers`), each from its
    /// start (`starts[i]`, or the beginning when there is none).
    pub fn new(paths: &[&Path], consumers: usize, starts: &[Start]) -> SharedInputs {
        SharedInputs {
            files: Arc::new(
                paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        SharedFile::starting_at(
                            p,
                            consumers,
                            starts.get(i).copied().unwrap_or_default(),
                        )
                    })
                    .collect(),
            ),
            slot: 0,
        }
    }

    /// The same readers, for the worker in `slot`.
    pub fn for_slot(&self, slot: usize) -> SharedInputs {
        SharedInputs {
            files: Arc::clone(&self.files),
            slot,
        }
    }

    /// This worker's cursor over input `index` (`None` for an index out of range).
    pub fn lines(&self, index: usize) -> Option<ChunkLines> {
        self.files.get(index).map(|f| f.lines(self.slot))
    }
}

/// What [`ChunkLines::next_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A line; its bytes via [`ChunkLines::line`].
    Line(LineRef),
    /// The next bytes are not read yet: ask again later.
    Wait,
    /// The end of the file.
    End,
}

/// Where the last line returned lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef {
    /// 1-based line number.
    pub no: u64,
    /// Longer than [`MAX_LINE`]: its bytes are not kept.
    pub too_long: bool,
    start: usize,
    end: usize,
    /// The line crossed a chunk boundary and was assembled in the cursor's own buffer.
    assembled: bool,
}

/// Where a reader starts: the byte offset of a line's first byte and the number of lines before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Start {
    pub offset: u64,
    pub line: u64,
}

/// One consumer's cursor over the lines of a [`SharedFile`].
pub struct ChunkLines {
    file: Arc<SharedFile>,
    slot: usize,
    chunk: Option<Arc<Chunk>>,
    /// Index of the next chunk to fetch.
    next: u64,
    pos: usize,
    /// File offset of the current chunk's first byte.
    chunk_offset: u64,
    /// File offset just past the last line returned (its newline included).
    consumed: u64,
    /// A line crossing chunk boundaries, assembled here (at most `MAX_LINE + 1` bytes kept).
    partial: Vec<u8>,
    partial_len: usize,
    in_partial: bool,
    line_no: u64,
    ended: bool,
}

impl ChunkLines {
    /// The next line, without its newline (and without a `\r` before it).
    pub fn next_line(&mut self) -> io::Result<Next> {
        if self.ended {
            return Ok(Next::End);
        }
        loop {
            let Some(chunk) = self.chunk.as_ref() else {
                match self.file.get(self.next)? {
                    Fetch::Chunk(c) => {
                        self.chunk = Some(c);
                        self.chunk_offset =
                            self.file.base_offset() + self.next * self.file.chunk as u64;
                        // (The first chunk of a resumed file starts before the start line: `pos` already
                        // points past those bytes.)
                        if self.next > 0 {
                            self.pos = 0;
                        }
                        self.next += 1;
                        continue;
                    }
                    Fetch::NotYet => return Ok(Next::Wait),
                    Fetch::End => {
                        self.ended = true;
                        self.file.advance(self.slot, u64::MAX);
                        if self.in_partial {
                            self.in_partial = false;
                            self.consumed += self.partial_len as u64;
                            return Ok(Next::Line(self.assembled_line()));
                        }
                        return Ok(Next::End);
                    }
                }
            };
            let data = chunk.bytes();
            let rest = &data[self.pos.min(data.len())..];
            match memchr::memchr(b'\n', rest) {
                Some(i) if self.in_partial => {
                    append_capped(&mut self.partial, &mut self.partial_len, &rest[..i]);
                    self.pos += i + 1;
                    self.in_partial = false;
                    self.consumed = self.chunk_offset + self.pos as u64;
                    return Ok(Next::Line(self.assembled_line()));
                }
                Some(i) => {
                    let (start, end) = (self.pos, self.pos + i);
                    self.pos = end + 1;
                    self.consumed = self.chunk_offset + self.pos as u64;
                    self.line_no += 1;
                    let too_long = end - start > MAX_LINE;
                    let stop = if !too_long && end > start && data[end - 1] == b'\r' {
                        end - 1
                    } else {
                        end
                    };
                    return Ok(Next::Line(LineRef {
                        no: self.line_no,
                        too_long,
                        start,
                        end: if too_long { start } else { stop },
                        assembled: false,
                    }));
                }
                None => {}
            }
            // The chunk is used up; a line that started in it continues in the next chunk (or ends with the
            // file): keep its start.
            let at_end = self.pos >= data.len();
            if !self.in_partial && !at_end {
                self.partial.clear();
                self.partial_len = 0;
                self.in_partial = true;
            }
            if let Some(c) = self.chunk.take() {
                let tail = &c.bytes()[self.pos.min(c.len)..];
                append_capped(&mut self.partial, &mut self.partial_len, tail);
            }
            self.file.advance(self.slot, self.next);
        }
    }

    fn assembled_line(&mut self) -> LineRef {
        self.line_no += 1;
        let too_long = self.partial_len > MAX_LINE;
        let mut end = if too_long { 0 } else { self.partial.len() };
        if end > 0 && self.partial[end - 1] == b'\r' {
            end -= 1;
        }
        LineRef {
            no: self.line_no,
            too_long,
            start: 0,
            end,
            assembled: true,
        }
    }

    /// Where a reader resuming after the last line returned would start.
    pub fn resume_point(&self) -> Start {
        Start {
            offset: self.consumed,
            line: self.line_no,
        }
    }

    /// The bytes of a line this cursor returned last.
    pub fn line(&self, r: &LineRef) -> &[u8] {
        if r.assembled {
            &self.partial[r.start..r.end]
        } else {
            match &self.chunk {
                Some(c) => &c.bytes()[r.start..r.end],
                None => &[],
            }
        }
    }
}

/// Appends `bytes` to a line being assembled: keeps at most `MAX_LINE + 1` bytes (enough to know the line is
/// too long) and counts all of them in `len`.
fn append_capped(partial: &mut Vec<u8>, len: &mut usize, bytes: &[u8]) {
    let keep = (MAX_LINE + 1)
        .saturating_sub(partial.len())
        .min(bytes.len());
    partial.extend_from_slice(&bytes[..keep]);
    *len += bytes.len();
}

impl Drop for ChunkLines {
    fn drop(&mut self) {
        self.chunk = None;
        self.file.advance(self.slot, u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(lines: &mut ChunkLines) -> Vec<(u64, bool, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            match lines.next_line().unwrap() {
                Next::Line(r) => out.push((r.no, r.too_long, lines.line(&r).to_vec())),
                Next::Wait => std::thread::yield_now(),
                Next::End => return out,
            }
        }
    }

    /// Writes `text` to a file `t.jsonl` in `dir`.
    fn write(dir: &tempfile::TempDir, text: &[u8]) -> PathBuf {
        let path = dir.path().join("t.jsonl");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text)
            .unwrap();
        path
    }

    fn expected(text: &[u8]) -> Vec<(u64, bool, Vec<u8>)> {
        let mut v: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        if text.ends_with(b"\n") {
            v.pop();
        }
        v.into_iter()
            .enumerate()
            .map(|(i, l)| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                (i as u64 + 1, false, l.to_vec())
            })
            .collect()
    }

    #[test]
    fn lines_across_chunk_boundaries_reach_every_consumer_intact() {
        // Lines of every length around the chunk size, so that boundaries fall everywhere in a line.
        let dir = tempfile::tempdir().unwrap();
        let mut text = Vec::new();
        let mut n = 0usize;
        while text.len() < 3 * CHUNK + 12_345 {
            let len = (n * 7919) % 3001;
            text.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, len));
            if n % 5 == 0 {
                text.push(b'\r');
            }
            text.push(b'\n');
            n += 1;
        }
        text.extend_from_slice(b"last line without newline");
        let path = write(&dir, &text);
        let file = SharedFile::new(&path, 2);
        let (mut a, mut b) = (file.lines(0), file.lines(1));
        let want = expected(&text);
        // One consumer all the way first: the reader must not hold more than AHEAD chunks for the other,
        // and (fewer chunks than AHEAD here) the lagging one still gets everything.
        assert_eq!(collect(&mut a), want);
        assert_eq!(collect(&mut b), want);
    }

    #[test]
    fn a_cursor_started_at_a_resume_point_reads_exactly_the_rest() {
        // Small unaligned chunks of 4 KiB with O_DIRECT: resume points fall inside chunks, on chunk
        // boundaries and after lines assembled across chunks.
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i} {}\n", "z".repeat((i * 37) % 5000)).into_bytes())
            .chain(b"tail without newline".iter().copied())
            .collect();
        let path = write(&dir, &text);
        let want = expected(&text);
        for stop in [0usize, 1, 2, 3, 17, 500, 1999, 2000, 2001] {
            let file = SharedFile::with_geometry(&path, 1, 4096, 2, 0);
            let mut a = file.lines(0);
            let mut taken = 0;
            while taken < stop {
                match a.next_line().unwrap() {
                    Next::Line(_) => taken += 1,
                    Next::Wait => std::thread::yield_now(),
                    Next::End => break,
                }
            }
            let at = a.resume_point();
            drop(a);
            assert_eq!(at.line as usize, taken);
            let resumed = SharedFile::build(&path, 1, 4096, 2, 0, at);
            let got = collect(&mut resumed.lines(0));
            assert_eq!(got, want[taken..].to_vec(), "stop after {stop} lines");
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_reported_without_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        text.extend_from_slice(b"\nafter\n");
        let path = write(&dir, &text);
        let file = SharedFile::new(&path, 1);
        let got = collect(&mut file.lines(0));
        assert_eq!(
            got,
            vec![
                (1, false, b"short".to_vec()),
                (2, true, Vec::new()),
                (3, false, b"after".to_vec())
            ]
        );
    }

    #[test]
    fn a_consumer_ahead_waits_for_the_slowest_and_nothing_is_lost() {
        // Tiny chunks, two chunks of read-ahead, O_DIRECT from the first byte: one consumer runs ahead
        // until the reader stops for the other; then they alternate.
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..3000)
            .flat_map(|i| format!("line {i} {}\n", "y".repeat(i % 97)).into_bytes())
            .collect();
        let path = write(&dir, &text);
        let file = SharedFile::with_geometry(&path, 2, 4096, 2, 0);
        let (mut a, mut b) = (file.lines(0), file.lines(1));
        let want = expected(&text);
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut waits = 0;
        let (mut a_done, mut b_done) = (false, false);
        // `a` takes lines until it must wait (the reader is two chunks ahead of `b`, at most).
        while !a_done || !b_done {
            let mut progressed = false;
            for (lines, got, done, burst) in [
                (&mut a, &mut got_a, &mut a_done, 400),
                (&mut b, &mut got_b, &mut b_done, 7),
            ] {
                for _ in 0..burst {
                    if *done {
                        break;
                    }
                    match lines.next_line().unwrap() {
                        Next::Line(r) => {
                            got.push((r.no, r.too_long, lines.line(&r).to_vec()));
                            progressed = true;
                        }
                        Next::Wait => {
                            waits += 1;
                            break;
                        }
                        Next::End => *done = true,
                    }
                }
            }
            if !progressed {
                std::thread::yield_now();
            }
        }
        assert_eq!(got_a, want);
        assert_eq!(got_b, want);
        assert!(waits > 0, "the leading consumer never had to wait");
        // Never more than `ahead` chunks held for the slowest consumer (all released at the end).
        assert!(file.lock().chunks.is_empty());
    }

    #[test]
    fn an_empty_file_has_no_lines_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, b"");
        assert!(collect(&mut SharedFile::new(&path, 1).lines(0)).is_empty());
        let missing = SharedFile::new(&dir.path().join("missing.jsonl"), 1);
        let mut lines = missing.lines(0);
        let err = loop {
            match lines.next_line() {
                Ok(Next::Wait) => std::thread::yield_now(),
                Ok(other) => panic!("expected an error, got {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("No such file"), "{err}");
    }
}
