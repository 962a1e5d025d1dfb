//! Following a JSON-lines audit log through rotation: the bytes of complete lines, in order, and
//! with each batch a [`Position`] that, saved by the caller once it has kept the batch's lines,
//! lets a restarted follower continue exactly there (no line lost, none repeated). It knows
//! nothing of audit events or the store: the driver parses the lines, journals them, and only
//! then saves the position's string.
//!
//! What it copes with: a rename rotation (kube-apiserver's lumberjack renames `audit.log` to
//! `audit-<time>.log` and creates a new `audit.log`): the old file, still open, is read to its
//! end, then the new one from its start; a copytruncate (logrotate copies the file, then
//! truncates it): reading restarts at 0, after the rest of what was written before the
//! truncation is read from the copy when one is found beside it; a line cut by either (handed out
//! alone, never glued to the next file's first line); a line over a bound (skipped to its
//! newline, never buffered whole); a saved position whose file is gone or was rotated while no
//! one followed. It polls (no inotify): a poll is a stat, a read of at most 256 bytes (the
//! file's head, which tells a truncated-then-refilled file from the one that was read) and a read
//! of what is new. Depends on std and tokio only.

use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::mem;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// How many of a file's first bytes identify its content (with its device and inode): a
/// reused inode, or a file truncated and refilled, starts with other bytes (an audit line has
/// its auditID within its first 100 bytes).
const HEAD_LEN: usize = 256;

/// A file, by device and inode (what survives a rename).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Where reading stands: the file and the byte offset just past the last complete line handed
/// out (or skipped). Kept by the caller as its string, `v1:<dev>:<inode>:<offset>:<head>`, where
/// `<head>` is 16 hex digits of a SHA-256 of the file's first `min(256, offset)` bytes: bytes
/// that were already read, so a file that only grows keeps them, and a file that was truncated
/// and written again (or a new file on a reused inode) does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub file: FileId,
    pub offset: u64,
    head: u64,
}

impl Position {
    /// How many of the file's first bytes the head hash covers.
    fn head_len(&self) -> usize {
        head_len(self.offset)
    }
}

fn head_len(offset: u64) -> usize {
    usize::try_from(offset).map_or(HEAD_LEN, |o| o.min(HEAD_LEN))
}

fn head_hash(bytes: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v1:{}:{}:{}:{:016x}",
            self.file.dev, self.file.ino, self.offset, self.head
        )
    }
}

impl FromStr for Position {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Corrupt(format!("audit log position {s:?}"));
        let mut parts = s.split(':');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let mut number = || {
            parts
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        let (dev, ino, offset) = (number()?, number()?, number()?);
        let head = match (parts.next(), parts.next()) {
            (Some(h), None) if h.len() == 16 => u64::from_str_radix(h, 16).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        Ok(Position {
            file: FileId { dev, ino },
            offset,
            head,
        })
    }
}

/// Where to start when no position is saved, or the saved one matches no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The file's first line.
    Beginning,
    /// Just past the file's last complete line (a line being written is read once complete).
    /// Only the file there at [`Follower::open`]: a file that appears later is all new and is
    /// read from its start.
    End,
}

/// Something the caller should know (count, log once); none of these stops the follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowNote {
    /// The path names a new file (a rename rotation): `from` was read to its end, then `to` is
    /// read from its start.
    Rotated { from: FileId, to: FileId },
    /// The file got shorter than what was read, or its first bytes changed (copytruncate):
    /// reading restarts at its start. `copy` is the file the rest of what was written before the
    /// truncation was read from; without one, lines written between the last read and the
    /// truncation are lost.
    Truncated { copy: Option<PathBuf> },
    /// The line at `index` in this batch ended a file that was rotated away or truncated without
    /// its newline: a cut line, handed out as is (a parser counts it as truncated).
    LineCut { index: usize },
    /// A line starting at `offset` is longer than `limit` bytes: skipped to its newline.
    LineTooLong { offset: u64, limit: usize },
    /// The saved position's file is no longer at the path but was found at `path` (rotated,
    /// or copied before a truncation, while no one followed): it is read to its end first, then
    /// the path's file from its start.
    ResumedElsewhere { path: PathBuf },
    /// The saved position matches no file: reading starts as `start` says.
    SavedNotFound { saved: Position, start: Start },
}

/// What one [`Follower::next_batch`] hands out.
#[derive(Debug, Default)]
pub struct Batch {
    /// Complete lines, without their newline, in file order; empty lines are left out.
    pub lines: Vec<Vec<u8>>,
    /// To save once `lines` are kept. `None` only while no file was ever found (nothing to save).
    pub position: Option<Position>,
    /// What happened on the way.
    pub notes: Vec<FollowNote>,
}

/// The follower's knobs.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// How long to wait before looking again when there is nothing new.
    pub poll_interval: Duration,
    /// Lines longer than this (bytes) are skipped, never buffered whole.
    pub max_line: usize,
    /// How much is read at once.
    pub read_chunk: usize,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll_interval: Duration::from_millis(200),
            max_line: 4 << 20,
            read_chunk: 256 << 10,
        }
    }
}

/// One open file and how far it was read.
struct Cursor {
    file: Arc<File>,
    id: FileId,
    /// Just past the last line handed out or skipped: what the position says.
    offset: u64,
    /// Read up to here: `offset + carry.len()`, or further while `skipping`.
    read: u64,
    /// The start of a line whose newline has not been read yet.
    carry: Vec<u8>,
    /// Inside a line over the bound: everything up to its newline is dropped.
    skipping: bool,
    /// The file's first bytes as far as read (at most `HEAD_LEN`, at least `min(HEAD_LEN,
    /// offset)`).
    head: Vec<u8>,
    /// No longer the path's file (rotated away, or the copy of a truncated one): read to its end,
    /// then the path's file from its start.
    draining: bool,
}

impl Cursor {
    /// A file read from `offset` (blocking: reads its head).
    fn at(file: File, id: FileId, offset: u64, skipping: bool, draining: bool) -> io::Result<Self> {
        let head = read_at(&file, 0, head_len(offset))?;
        Ok(Cursor {
            file: Arc::new(file),
            id,
            offset,
            read: offset,
            carry: Vec::new(),
            skipping,
            head,
            draining,
        })
    }

    fn fresh(file: File, id: FileId) -> Self {
        Cursor {
            file: Arc::new(file),
            id,
            offset: 0,
            read: 0,
            carry: Vec::new(),
            skipping: false,
            head: Vec::new(),
            draining: false,
        }
    }

    fn head_len(&self) -> usize {
        head_len(self.offset).min(self.head.len())
    }

    fn position(&self) -> Position {
        Position {
            file: self.id,
            offset: self.offset,
            head: head_hash(&self.head[..self.head_len()]),
        }
    }

    /// Takes in `chunk`, read at `self.read`: complete lines go out until the batch is full (the
    /// rest of the chunk is then forgotten and read again next time, so nothing past the bound is
    /// held); a line's start is carried to the next chunk.
    fn take_in(&mut self, chunk: &[u8], out: &mut Out, limits: Limits) {
        let base = self.read;
        let known = self.head.len() as u64;
        if known < HEAD_LEN as u64 && base <= known {
            let from = (known - base) as usize;
            let to = (HEAD_LEN - base as usize).min(chunk.len());
            if from < to {
                self.head.extend_from_slice(&chunk[from..to]);
            }
        }
        let mut start = 0;
        for (i, _) in chunk.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            let end = base + i as u64 + 1;
            if self.skipping {
                self.skipping = false;
            } else if self.carry.len() + (i - start) > limits.max_line {
                out.notes.push(FollowNote::LineTooLong {
                    offset: self.offset,
                    limit: limits.max_line,
                });
                self.carry.clear();
            } else {
                let mut line = mem::take(&mut self.carry);
                line.extend_from_slice(&chunk[start..i]);
                out.push(line);
            }
            self.offset = end;
            start = i + 1;
            if out.full(limits) {
                self.read = end;
                return;
            }
        }
        self.read = base + chunk.len() as u64;
        if !self.skipping {
            self.carry.extend_from_slice(&chunk[start..]);
            if self.carry.len() > limits.max_line {
                out.notes.push(FollowNote::LineTooLong {
                    offset: self.offset,
                    limit: limits.max_line,
                });
                self.carry = Vec::new();
                self.skipping = true;
            }
        }
    }

    /// Hands out what is carried as a cut line: the file it was read from ends here.
    fn cut(&mut self, out: &mut Out) {
        let carry = mem::take(&mut self.carry);
        if !self.skipping && !carry.is_empty() {
            out.notes.push(FollowNote::LineCut {
                index: out.lines.len(),
            });
            out.push(carry);
        }
        self.skipping = false;
        self.offset = self.read;
    }
}

#[derive(Clone, Copy)]
struct Limits {
    max_lines: usize,
    max_bytes: usize,
    max_line: usize,
}

/// What the next batch will hand out. Kept in the follower, not in `next_batch`'s frame, so a
/// `next_batch` dropped at an await (a `select!`) loses nothing: the offset only moves past what
/// is in here.
#[derive(Default)]
struct Out {
    lines: Vec<Vec<u8>>,
    bytes: usize,
    notes: Vec<FollowNote>,
}

impl Out {
    fn push(&mut self, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        self.bytes += line.len();
        self.lines.push(line);
    }

    fn full(&self, limits: Limits) -> bool {
        self.lines.len() >= limits.max_lines || self.bytes >= limits.max_bytes
    }
}

/// Follows one path through rotation. See the module documentation.
pub struct Follower {
    path: PathBuf,
    opts: FollowOptions,
    cur: Option<Cursor>,
    /// The position of the last file finished, while the path has no file yet.
    last: Option<Position>,
    out: Out,
}

impl Follower {
    /// [`Follower::open_with`] with the default options.
    pub fn open(
        path: impl Into<PathBuf>,
        saved: Option<Position>,
        start: Start,
    ) -> io::Result<Self> {
        Self::open_with(path, saved, start, FollowOptions::default())
    }

    /// Follows `path` from `saved` when it still matches a file (the path's, or one in the same
    /// directory: the file it was rotated to, or the copy a copytruncate left), else from
    /// `start`. A path with no file yet is waited for. Blocking (a stat, a directory scan when
    /// the saved file is not at the path, reads of a few hundred bytes, at `End` a backwards scan
    /// of at most `max_line` bytes): call it before the runtime is busy or from `spawn_blocking`.
    ///
    /// How far the resume goes: only the one file holding the saved position is finished before
    /// the path's file; when the log was rotated more than once while no one followed, the files
    /// in between are not read (their lines are lost, not repeated), and a sibling already
    /// compressed is not found (then [`FollowNote::SavedNotFound`]).
    pub fn open_with(
        path: impl Into<PathBuf>,
        saved: Option<Position>,
        start: Start,
        opts: FollowOptions,
    ) -> io::Result<Self> {
        let path = path.into();
        let mut follower = Follower {
            path,
            opts,
            cur: None,
            last: saved.clone(),
            out: Out::default(),
        };
        let current = open_file(&follower.path)?;
        if let Some(saved) = saved {
            let current_id = current.as_ref().map(|(_, id, _)| *id);
            if let Some((file, id, size)) = &current
                && *id == saved.file
                && matches(file, *size, &saved)?
            {
                let (file, id) = (file.try_clone()?, *id);
                follower.cur = Some(Cursor::at(file, id, saved.offset, false, false)?);
                return Ok(follower);
            }
            let exclude: Vec<FileId> = current_id.into_iter().collect();
            if let Some((file, id, found)) = find_file(&follower.path, &saved, &exclude)? {
                follower
                    .out
                    .notes
                    .push(FollowNote::ResumedElsewhere { path: found });
                follower.cur = Some(Cursor::at(file, id, saved.offset, false, true)?);
                return Ok(follower);
            }
            if current_id == Some(saved.file)
                && let Some((file, id, _)) = current
            {
                // The same file, shorter or starting with other bytes: truncated while no one
                // followed (and its copy is gone), or a new file on a reused inode. Either way
                // all of it is new.
                follower
                    .out
                    .notes
                    .push(FollowNote::Truncated { copy: None });
                follower.cur = Some(Cursor::fresh(file, id));
                return Ok(follower);
            }
            follower
                .out
                .notes
                .push(FollowNote::SavedNotFound { saved, start });
        }
        if let Some((file, id, size)) = current {
            let (offset, skipping) = match start {
                Start::Beginning => (0, false),
                Start::End => end_offset(&file, size, follower.opts.max_line)?,
            };
            follower.cur = Some(Cursor::at(file, id, offset, skipping, false)?);
        }
        Ok(follower)
    }

    /// The next lines: waits (polling) until at least one complete line or a note is there, then
    /// hands out up to `max_lines` lines and about `max_bytes` bytes (one line more at most).
    /// Cancel-safe: dropped at an await, nothing read is lost.
    pub async fn next_batch(&mut self, max_lines: usize, max_bytes: usize) -> io::Result<Batch> {
        let limits = Limits {
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(1),
            max_line: self.opts.max_line,
        };
        loop {
            self.step(limits).await?;
            if !self.out.lines.is_empty() || !self.out.notes.is_empty() {
                let out = mem::take(&mut self.out);
                return Ok(Batch {
                    lines: out.lines,
                    position: self.position(),
                    notes: out.notes,
                });
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    /// Where reading stands now: what to save once everything handed out is kept.
    pub fn position(&self) -> Option<Position> {
        self.cur
            .as_ref()
            .map(Cursor::position)
            .or_else(|| self.last.clone())
    }

    /// Reads what there is, up to the batch's bound, following rotation and truncation.
    async fn step(&mut self, limits: Limits) -> io::Result<()> {
        loop {
            if self.out.full(limits) {
                return Ok(());
            }
            let Some(cur) = self.cur.as_ref() else {
                let path = self.path.clone();
                match blocking(move || open_file(&path)).await? {
                    Some((file, id, _)) => {
                        self.cur = Some(Cursor::fresh(file, id));
                        continue;
                    }
                    None => return Ok(()),
                }
            };
            if !cur.draining && self.truncated().await? {
                continue;
            }
            if self.read_some(limits).await? > 0 {
                continue;
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            if cur.draining {
                // Read to its end; what is carried is a line the rotation cut.
                cur.cut(&mut self.out);
                self.last = Some(cur.position());
                self.cur = None;
                continue;
            }
            let path = self.path.clone();
            let now = blocking(move || file_id(&path)).await?;
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            match now {
                Some(id) if id != cur.id => {
                    // Renamed away. Read it once more to its end (what was written between the
                    // last read and the rename), then switch. A writer still appending to the
                    // old file after that loses those lines to us; lumberjack closes the file
                    // before it renames it.
                    self.out.notes.push(FollowNote::Rotated {
                        from: cur.id,
                        to: id,
                    });
                    cur.draining = true;
                }
                // The same file, or none at the path (between a rename and the new file's
                // creation, or deleted): keep to the open one.
                _ => return Ok(()),
            }
        }
    }

    /// Whether the current file was truncated (or truncated and refilled) since it was read; if
    /// so, reading goes on in its copy when one is found, else at its start.
    async fn truncated(&mut self) -> io::Result<bool> {
        let Some(cur) = self.cur.as_ref() else {
            return Ok(false);
        };
        let file = cur.file.clone();
        let n = cur.head_len();
        let (size, head) =
            blocking(move || Ok((file.metadata()?.len(), read_at(&file, 0, n)?))).await?;
        let Some(cur) = self.cur.as_ref() else {
            return Ok(false);
        };
        if size >= cur.read && head[..] == cur.head[..n] {
            return Ok(false);
        }
        let want = cur.position();
        let copy = if want.offset > 0 {
            let (path, exclude) = (self.path.clone(), vec![cur.id]);
            blocking(move || {
                find_file(&path, &want, &exclude)?
                    .map(|(file, id, found)| {
                        Ok((Cursor::at(file, id, want.offset, false, true)?, found))
                    })
                    .transpose()
            })
            .await?
        } else {
            None
        };
        let Some(cur) = self.cur.as_mut() else {
            return Ok(false);
        };
        match copy {
            Some((copy, found)) => {
                // The copy holds what was read plus what was written before the truncation; the
                // carried line start is read again there.
                self.out
                    .notes
                    .push(FollowNote::Truncated { copy: Some(found) });
                self.cur = Some(copy);
            }
            None => {
                cur.cut(&mut self.out);
                self.out.notes.push(FollowNote::Truncated { copy: None });
                cur.offset = 0;
                cur.read = 0;
                cur.head.clear();
            }
        }
        Ok(true)
    }

    /// Reads one chunk of the current file; the number of bytes read (0 at its end).
    async fn read_some(&mut self, limits: Limits) -> io::Result<usize> {
        let Some(cur) = self.cur.as_ref() else {
            return Ok(0);
        };
        let (file, at, len) = (cur.file.clone(), cur.read, self.opts.read_chunk.max(1));
        let chunk = blocking(move || read_at(&file, at, len)).await?;
        let Some(cur) = self.cur.as_mut() else {
            return Ok(0);
        };
        cur.take_in(&chunk, &mut self.out, limits);
        Ok(chunk.len())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// The file at `path` (opened first, so the id is the open file's), or `None` when there is none.
fn open_file(path: &Path) -> io::Result<Option<(File, FileId, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(Some((file, FileId::of(&meta), meta.len())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_id(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileId::of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Up to `len` bytes at `at` (fewer at the file's end).
fn read_at(file: &File, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut n = 0;
    while n < len {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Whether `file` (of `size` bytes) is the one `pos` was read from: long enough, same head.
fn matches(file: &File, size: u64, pos: &Position) -> io::Result<bool> {
    Ok(size >= pos.offset && head_hash(&read_at(file, 0, pos.head_len())?) == pos.head)
}

/// A file beside `path`, not one of `exclude`, that `pos` could have been read from: the same
/// device and inode (a rename), or, when `pos` is past the start, the same head (a copy). The
/// same inode wins.
fn find_file(
    path: &Path,
    pos: &Position,
    exclude: &[FileId],
) -> io::Result<Option<(File, FileId, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut copy = None;
    for entry in std::fs::read_dir(dir)? {
        // A file that vanishes or cannot be read during the scan is simply not a candidate.
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let id = FileId::of(&meta);
        if !meta.is_file() || exclude.contains(&id) || meta.len() < pos.offset {
            continue;
        }
        let same = id == pos.file;
        if !same && (pos.offset == 0 || copy.is_some()) {
            continue;
        }
        let found = entry.path();
        let Ok(Some((file, id, size))) = open_file(&found) else {
            continue;
        };
        if !matches(&file, size, pos)? {
            continue;
        }
        if id == pos.file {
            return Ok(Some((file, id, found)));
        }
        copy = Some((file, id, found));
    }
    Ok(copy)
}

/// Where [`Start::End`] starts: just past the last newline. With none in the last `max_line`
/// bytes the file ends inside a line over the bound, skipped from the end (`true`).
fn end_offset(file: &File, size: u64, max_line: usize) -> io::Result<(u64, bool)> {
    const STEP: u64 = 64 << 10;
    let floor = size.saturating_sub(max_line as u64 + 1);
    let mut hi = size;
    while hi > floor {
        let lo = hi.saturating_sub(STEP).max(floor);
        let chunk = read_at(file, lo, (hi - lo) as usize)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok((lo + i as u64 + 1, false));
        }
        hi = lo;
    }
    Ok(if floor == 0 { (0, false) } else { (size, true) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/audit/v1.33/audit.log"
    );
    /// A generous bound on waiting for the follower; tests never depend on it being reached.
    const WAIT: Duration = Duration::from_secs(30);

    fn fixture() -> Vec<Vec<u8>> {
        std::fs::read(FIXTURE)
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn opts() -> FollowOptions {
        FollowOptions {
            poll_interval: Duration::from_millis(2),
            ..FollowOptions::default()
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect()
    }

    #[derive(Default, Debug)]
    struct Got {
        lines: Vec<Vec<u8>>,
        notes: Vec<FollowNote>,
        batches: usize,
        position: Option<Position>,
    }

    /// Batches until `n` lines came (fails after a generous wait).
    async fn take(f: &mut Follower, n: usize, max_lines: usize) -> Got {
        let mut got = Got::default();
        tokio::time::timeout(WAIT, async {
            while got.lines.len() < n {
                let b = f.next_batch(max_lines, 1 << 20).await.unwrap();
                got.lines.extend(b.lines);
                got.notes.extend(b.notes);
                got.batches += 1;
                got.position = b.position.or(got.position.take());
            }
        })
        .await
        .expect("the follower handed out the lines in time");
        got
    }

    /// Batches until the line `marker` came: everything handed out before it, and it.
    async fn take_until(f: &mut Follower, marker: &[u8]) -> Got {
        let mut got = Got::default();
        tokio::time::timeout(WAIT, async {
            while got.lines.last().map(Vec::as_slice) != Some(marker) {
                let b = f.next_batch(1000, 1 << 20).await.unwrap();
                got.lines.extend(b.lines);
                got.notes.extend(b.notes);
                got.position = b.position.or(got.position.take());
            }
        })
        .await
        .expect("the follower reached the marker in time");
        got
    }

    fn line(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn position_string_round_trips_and_rejects_garbage() {
        let p = Position {
            file: FileId {
                dev: 2049,
                ino: 1234567,
            },
            offset: 99,
            head: head_hash(b"abc"),
        };
        let s = p.to_string();
        assert!(s.starts_with("v1:2049:1234567:99:"), "{s}");
        assert_eq!(s.parse::<Position>().unwrap(), p);
        for bad in [
            "",
            "v2:1:2:3:0000000000000000",
            "v1:1:2:3",
            "v1:1:2:x:0000000000000000",
            "v1:1:2:3:00",
            "v1:1:2:3:000000000000000g",
            "v1:1:2:3:0000000000000000:9",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn recorded_log_written_in_pieces_comes_out_whole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        append(&path, b"");
        let want = fixture();
        assert_eq!(want.len(), 361);
        let bytes = std::fs::read(FIXTURE).unwrap();
        // Small reads, so lines span reads as well as writes.
        let mut f = Follower::open_with(
            &path,
            None,
            Start::Beginning,
            FollowOptions {
                read_chunk: 997,
                ..opts()
            },
        )
        .unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                for piece in bytes.chunks(1500) {
                    append(&path, piece);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let got = take(&mut f, want.len(), 50).await;
        writer.await.unwrap();
        assert_eq!(got.lines, want);
        assert!(got.notes.is_empty(), "{:?}", got.notes);
        let end = std::fs::metadata(&path).unwrap().len();
        assert_eq!(got.position.unwrap().offset, end);
    }

    #[tokio::test]
    async fn start_at_end_skips_the_lines_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = fixture();
        append(&path, &joined(&lines[..3]));
        // A line being written when the follower starts is read once complete.
        append(&path, &lines[3][..40]);
        let mut f = Follower::open_with(&path, None, Start::End, opts()).unwrap();
        append(&path, &lines[3][40..]);
        append(&path, b"\n");
        append(&path, &joined(&lines[4..5]));
        let got = take(&mut f, 2, 10).await;
        assert_eq!(got.lines, lines[3..5]);
    }

    #[tokio::test]
    async fn a_file_that_appears_later_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = Follower::open_with(&path, None, Start::End, opts()).unwrap();
        assert_eq!(f.position(), None);
        let lines = fixture();
        append(&path, &joined(&lines[..2]));
        assert_eq!(take(&mut f, 2, 10).await.lines, lines[..2]);
    }

    #[tokio::test]
    async fn a_saved_position_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = fixture();
        append(&path, &joined(&lines[..10]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        let first = take(&mut f, 4, 2).await;
        assert_eq!(first.lines, lines[..4]);
        assert_eq!(first.batches, 2, "max_lines bounds a batch");
        let saved: Position = first.position.unwrap().to_string().parse().unwrap();
        drop(f);
        append(&path, &joined(&lines[10..20]));
        // `End` does not apply: the saved position does.
        let mut f = Follower::open_with(&path, Some(saved), Start::End, opts()).unwrap();
        let marker = line("marker");
        append(&path, b"marker\n");
        let rest = take_until(&mut f, &marker).await;
        assert_eq!(rest.lines[..rest.lines.len() - 1], lines[4..20]);
        assert!(rest.notes.is_empty(), "{:?}", rest.notes);
    }

    #[tokio::test]
    async fn max_bytes_bounds_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = fixture();
        append(&path, &joined(&lines[..5]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        for want in &lines[..5] {
            let b = f.next_batch(100, 1).await.unwrap();
            assert_eq!(b.lines, std::slice::from_ref(want));
        }
    }

    #[tokio::test]
    async fn rename_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit-2025-06-01T10-00-00.000.log");
        let lines = fixture();
        append(&path, &joined(&lines[..4]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        assert_eq!(take(&mut f, 4, 100).await.lines, lines[..4]);
        let old = file_id(&path).unwrap().unwrap();
        // Written just before the rename, possibly not read yet.
        append(&path, &joined(&lines[4..6]));
        std::fs::rename(&path, &rotated).unwrap();
        append(&path, &joined(&lines[6..8]));
        let new = file_id(&path).unwrap().unwrap();
        append(&path, b"marker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(got.lines[..got.lines.len() - 1], lines[4..8]);
        assert_eq!(got.notes, [FollowNote::Rotated { from: old, to: new }]);
        assert_eq!(got.position.unwrap().file, new);
    }

    #[tokio::test]
    async fn a_partial_line_at_rotation_is_handed_out_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        append(&path, b"first\n");
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        assert_eq!(take(&mut f, 1, 100).await.lines, [line("first")]);
        append(&path, b"{\"kind\":\"Event\",\"cut");
        std::fs::rename(&path, dir.path().join("audit-1.log")).unwrap();
        append(&path, b"second\nmarker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(
            got.lines,
            [
                line("{\"kind\":\"Event\",\"cut"),
                line("second"),
                line("marker")
            ]
        );
        assert!(
            got.notes.contains(&FollowNote::LineCut { index: 0 }),
            "{:?}",
            got.notes
        );
    }

    #[tokio::test]
    async fn copytruncate_continues_from_the_start_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let copy = dir.path().join("audit.log.1");
        let lines = fixture();
        append(&path, &joined(&lines[..4]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        assert_eq!(take(&mut f, 4, 100).await.lines, lines[..4]);
        // Written before the copy, possibly not read before the truncation: found in the copy.
        append(&path, &joined(&lines[4..5]));
        std::fs::copy(&path, &copy).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Refilled past the old size at once: only the head tells it from the old content.
        append(&path, &joined(&lines[5..20]));
        append(&path, b"marker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(got.lines[..got.lines.len() - 1], lines[4..20]);
        assert_eq!(got.notes, [FollowNote::Truncated { copy: Some(copy) }]);
    }

    #[tokio::test]
    async fn truncation_without_a_copy_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = fixture();
        append(&path, &joined(&lines[..3]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        assert_eq!(take(&mut f, 3, 100).await.lines, lines[..3]);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, &joined(&lines[3..4]));
        append(&path, b"marker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(got.lines, [lines[3].clone(), line("marker")]);
        assert_eq!(got.notes, [FollowNote::Truncated { copy: None }]);
    }

    #[tokio::test]
    async fn an_overlong_line_is_skipped_with_a_note() {
        // Small reads take the line over the bound across reads; large ones within one.
        for read_chunk in [16, 1 << 16] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.log");
            let mut content = b"short-1\n".to_vec();
            content.extend(std::iter::repeat_n(b'x', 1000));
            content.extend(b"\nshort-2\n");
            append(&path, &content);
            let o = FollowOptions {
                max_line: 100,
                read_chunk,
                ..opts()
            };
            let mut f = Follower::open_with(&path, None, Start::Beginning, o).unwrap();
            let got = take(&mut f, 2, 100).await;
            assert_eq!(
                got.lines,
                [line("short-1"), line("short-2")],
                "{read_chunk}"
            );
            assert_eq!(
                got.notes,
                [FollowNote::LineTooLong {
                    offset: 8,
                    limit: 100
                }],
                "{read_chunk}"
            );
            assert_eq!(got.position.unwrap().offset, content.len() as u64);
            let carried = f.cur.as_ref().unwrap().carry.capacity();
            assert!(carried <= 100 + read_chunk, "{carried}");
        }
    }

    #[tokio::test]
    async fn a_saved_position_whose_file_is_gone_falls_back_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = fixture();
        append(&path, &joined(&lines[..2]));
        let dev = file_id(&path).unwrap().unwrap().dev;
        let saved = Position {
            file: FileId {
                dev,
                ino: u64::MAX - 7,
            },
            offset: 10,
            head: 0,
        };
        for start in [Start::Beginning, Start::End] {
            let mut f = Follower::open_with(&path, Some(saved.clone()), start, opts()).unwrap();
            let marker = format!("marker-{start:?}");
            append(&path, format!("{marker}\n").as_bytes());
            let got = take_until(&mut f, marker.as_bytes()).await;
            assert_eq!(
                got.notes,
                [FollowNote::SavedNotFound {
                    saved: saved.clone(),
                    start
                }]
            );
            match start {
                Start::Beginning => {
                    assert_eq!(got.lines[..2], lines[..2]);
                    assert_eq!(got.lines.len(), 3);
                }
                Start::End => assert_eq!(got.lines, [line(&marker)]),
            }
        }
    }

    #[tokio::test]
    async fn a_saved_position_in_a_rotated_file_finishes_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit-2025-06-01T10-00-00.000.log");
        let lines = fixture();
        append(&path, &joined(&lines[..6]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        let saved = take(&mut f, 3, 3).await.position.unwrap();
        drop(f);
        std::fs::rename(&path, &rotated).unwrap();
        append(&path, &joined(&lines[6..8]));
        let mut f = Follower::open_with(&path, Some(saved), Start::End, opts()).unwrap();
        append(&path, b"marker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(got.lines[..got.lines.len() - 1], lines[3..8]);
        assert_eq!(got.notes, [FollowNote::ResumedElsewhere { path: rotated }]);
    }

    #[tokio::test]
    async fn a_saved_position_in_a_file_truncated_while_away_reads_its_copy_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let copy = dir.path().join("audit.log.1");
        let lines = fixture();
        append(&path, &joined(&lines[..4]));
        let mut f = Follower::open_with(&path, None, Start::Beginning, opts()).unwrap();
        let saved = take(&mut f, 2, 2).await.position.unwrap();
        drop(f);
        std::fs::copy(&path, &copy).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, &joined(&lines[4..6]));
        let mut f = Follower::open_with(&path, Some(saved.clone()), Start::End, opts()).unwrap();
        append(&path, b"marker\n");
        let got = take_until(&mut f, b"marker").await;
        assert_eq!(got.lines[..got.lines.len() - 1], lines[2..6]);
        assert_eq!(
            got.notes,
            [FollowNote::ResumedElsewhere { path: copy.clone() }]
        );

        // Without the copy: the same file, changed, is read from its start.
        std::fs::remove_file(&copy).unwrap();
        let mut f = Follower::open_with(&path, Some(saved), Start::End, opts()).unwrap();
        let got = take(&mut f, 3, 100).await;
        assert_eq!(got.lines[..2], lines[4..6]);
        assert_eq!(got.notes, [FollowNote::Truncated { copy: None }]);
    }
}
