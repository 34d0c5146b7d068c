//! The state dir: open calls and undelivered events, kept across restarts and crashes.
//!
//! Owns `[state] dir` and the journal in it (`journal`): an append-only file of records,
//! one per line, each `<crc32 hex> <json>`. A batch of records is written before the
//! caller goes on (so it survives SIGKILL) and `fdatasync`ed right after (so it survives a
//! power cut; callers that need that wait for it). Opening replays the journal into the live state (the open calls' records
//! and the undelivered events), then rewrites it as just that state (compaction, also
//! done while running once the file has grown well past the live state).
//!
//! While running, the live state holds where each open call's record is in the file, not
//! its text (an open call costs the journal a few dozen bytes of memory), and compaction
//! happens beside the writers: what the snapshot holds is taken under the journal's lock
//! (the calls' places, the undelivered events encoded), the sync thread reads the calls'
//! lines back from the file (it only grows: they stay where they are) and writes and syncs
//! `journal.tmp` without the lock, and then, under the lock again, what was appended
//! meanwhile is copied over, synced, the file renamed over the journal, and the calls'
//! places moved to the new file. Writers never wait for the big write or its syncs.
//!
//! A torn last line (a crash in the middle of a write) is expected and dropped quietly; a
//! bad line anywhere else means the file is corrupt: it is moved aside as
//! `journal.corrupt-<unix time>` and the daemon starts fresh, saying so in the log.
//!
//! The files in the dir are never reached through a symbolic link (`O_NOFOLLOW`; the
//! snapshot is created new, `O_EXCL`), so a link planted at `journal`, `journal.tmp` or
//! `lock` makes the daemon refuse the file rather than truncate or read what it points at;
//! they are created with mode 0600 (the dir, when the daemon makes it, 0700) whatever the
//! umask. Sequence numbers go on from the last one across restarts; a journal whose numbers
//! reach [`RENUMBER_ABOVE`] has its live events renumbered from 1 (in order) when it is
//! opened, so they cannot wrap.
//!
//! Why a journal and not an embedded database: the state is small (open calls and the
//! events not yet accepted by Zammad), every change is an append, and compaction is
//! "write the live state"; a checksummed line format we own keeps recovery rules
//! explicit and testable, and a corrupt file can never panic the daemon. (redb 4 panics
//! on some corrupt-file checks in debug builds, and its major versions change the file
//! format.)
//!
//! [`Store`] appends under a mutex (a page-cache write: it survives SIGKILL at once) and
//! syncs on a thread of its own, at most once per [`SYNC_INTERVAL`], each sync covering
//! every write asked for meanwhile: the daemon's batches ask for a sync without waiting
//! for it; `flush` and `close` wait for theirs; a commit (the "sending" marks) hands its
//! records to the sync thread, which writes them right before the sync.

use crate::calls::{CallRecord, ShortStr};
use crate::zammad::cti::CtiRequest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

const JOURNAL: &str = "journal";
/// A compacted journal being written.
const TMP: &str = "journal.tmp";
/// Shortest time between two syncs. A sync costs the disk a flush (and, in a VM, an exit
/// to the host); at a few hundred calls a second one per batch and one per "sending" mark
/// took CPU from the FastAGI sessions. A write waiting for its sync waits up to this much
/// longer; a power cut (not a crash: writes survive those at once) can lose this much
/// more. A commit's records (the "sending" marks) are written only by the sync that
/// covers them, so that the wait adds nothing to the moment between a mark and its
/// event leaving, where a crash loses the event (the mark says Zammad may have it).
/// 20 ms: at 500 new calls a second, syncs every 5 ms took about a sixth of the daemon's
/// CPU (8.1 against 6.7 µs per AMI event, `cargo bench --bench daemon_load`), for a
/// window that only a power cut opens.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(20);
/// Compact once the journal is this many times the size it had after the last compaction
/// (and at least `COMPACT_MIN` bytes).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN: u64 = 1 << 20;
/// What a compaction holds of the file it writes before writing it out.
const SNAPSHOT_BUFFER: usize = 64 * 1024;
/// A journal opened with sequence numbers above this has its events renumbered from 1:
/// counting on from here, 2^63 more events (centuries at any rate) stay below `u64::MAX`.
pub const RENUMBER_ABOVE: u64 = 1 << 63;

/// One change to the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A reported call's state, as the tracker needs it to go on after a restart.
    Call { key: String, call: Box<CallRecord> },
    /// The call needs nothing more from the tracker (ended, or not reported).
    End { key: String },
    /// An event for Zammad, in the order it must be sent.
    Item { seq: u64, request: CtiRequest },
    /// The event is being sent: after a crash its fate is unknown.
    Sending { seq: u64 },
    /// The attempt certainly did not reach Zammad: the event is plain pending again.
    Unsent { seq: u64 },
    /// The event is done with (delivered, or given up for good).
    Done { seq: u64 },
}

/// An undelivered event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub request: CtiRequest,
    /// Its sending had started when the daemon stopped.
    pub sending: bool,
}

/// Everything the state dir holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub calls: BTreeMap<String, CallRecord>,
    pub items: BTreeMap<u64, StoredItem>,
}

impl State {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Call { key, call } => {
                self.calls.insert(key, *call);
            }
            Record::End { key } => {
                self.calls.remove(&key);
            }
            other => apply_to_items(&mut self.items, other),
        }
    }

    /// The records that rebuild this state.
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.calls.len() + self.items.len());
        for (key, call) in &self.calls {
            out.push(Record::Call {
                key: key.clone(),
                call: Box::new(call.clone()),
            });
        }
        item_records(&self.items, &mut out);
        out
    }

    /// The sequence number for the next event.
    pub fn next_seq(&self) -> u64 {
        self.items
            .keys()
            .next_back()
            .map_or(1, |s| s.saturating_add(1))
    }

    /// Numbers the undelivered events 1, 2, … in their order when the last number is
    /// above [`RENUMBER_ABOVE`] (a journal at `u64::MAX` would otherwise wrap).
    fn renumber_if_high(&mut self) {
        if self.next_seq() > RENUMBER_ABOVE {
            let items = std::mem::take(&mut self.items);
            self.items = (1..).zip(items.into_values()).collect();
        }
    }
}

/// Applies a record about undelivered events (`Call` and `End` are not theirs).
fn apply_to_items(items: &mut BTreeMap<u64, StoredItem>, record: Record) {
    match record {
        Record::Item { seq, request } => {
            items.insert(
                seq,
                StoredItem {
                    request,
                    sending: false,
                },
            );
        }
        Record::Sending { seq } => {
            if let Some(item) = items.get_mut(&seq) {
                item.sending = true;
            }
        }
        Record::Unsent { seq } => {
            if let Some(item) = items.get_mut(&seq) {
                item.sending = false;
            }
        }
        Record::Done { seq } => {
            items.remove(&seq);
        }
        Record::Call { .. } | Record::End { .. } => {}
    }
}

/// The records that rebuild `items`, in order.
fn item_records(items: &BTreeMap<u64, StoredItem>, out: &mut Vec<Record>) {
    for (seq, item) in items {
        out.push(Record::Item {
            seq: *seq,
            request: item.request.clone(),
        });
        if item.sending {
            out.push(Record::Sending { seq: *seq });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state.dir {dir:?}: {what}: {source}")]
    Dir {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("state.dir {dir:?} is in use by another asterisk-zammad-bridge; give each its own")]
    InUse { dir: PathBuf },
    #[error("writing the state journal failed: {0}")]
    Write(#[source] io::Error),
    #[error("the state journal is closed (the daemon is stopping)")]
    Closed,
}

/// The journal file and the live state it holds.
pub struct Journal {
    dir: PathBuf,
    /// Held locked while the journal is open: one daemon per state dir.
    _lock: File,
    /// Shared with the sync thread, which calls `sync_data` on it.
    file: Arc<File>,
    live: Live,
    bytes: u64,
    compacted_bytes: u64,
    /// While a compaction is under way: what was appended since its snapshot.
    compacting: Option<Compacting>,
}

/// A compaction under way, as the journal sees it.
struct Compacting {
    /// Where in the file its snapshot was taken: lines from here on are in `tail`.
    from: u64,
    /// What was appended since.
    tail: Vec<u8>,
}

/// What a compaction writes: the open calls' lines, read from `file` where the live state
/// says they are, then the undelivered events, encoded.
struct Snapshot {
    file: Arc<File>,
    /// In key order, as the live state has them.
    calls: Vec<(ShortStr, Span)>,
    items: Vec<u8>,
}

/// The new journal a compaction wrote (synced), and where each call's line is in it (in
/// key order).
struct Compacted {
    file: File,
    len: u64,
    calls: Vec<(ShortStr, Span)>,
}

impl Journal {
    /// Opens (creating) `dir` and its journal, loads the state, compacts; returns the
    /// journal and the state it loaded.
    pub fn open(dir: &Path) -> Result<(Journal, State), StoreError> {
        let dir_err = |what: &'static str| {
            move |source| StoreError::Dir {
                dir: dir.to_owned(),
                what,
                source,
            }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err("cannot create it"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join("lock"))
            .map_err(|e| dir_err(refused_or("not writable", &e))(e))?;
        let _ = lock.set_permissions(Permissions::from_mode(0o600));
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(dir_err("cannot lock it")(e));
            }
        }
        let path = dir.join(JOURNAL);
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let mut state = match opened {
            Ok(file) => load(file, dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(dir_err(refused_or("cannot read the journal", &e))(e)),
        };
        state.renumber_if_high();
        let (file, bytes, live) =
            write_compacted(dir, &state).map_err(dir_err("cannot write the journal"))?;
        let journal = Journal {
            dir: dir.to_owned(),
            _lock: lock,
            file: Arc::new(file),
            live,
            bytes,
            compacted_bytes: bytes,
            compacting: None,
        };
        Ok((journal, state))
    }

    /// The live state, read back from what the journal keeps of it (its calls' lines
    /// from the file).
    pub fn state(&self) -> io::Result<State> {
        self.live.state(&self.file)
    }

    /// Appends `records` (no sync: [`Store`] syncs) and applies them to the live state.
    /// Returns whether the journal has grown well past the live state and no compaction
    /// is under way: then it is time for `begin_compaction`.
    pub fn append(&mut self, records: Vec<Record>) -> io::Result<bool> {
        if records.is_empty() {
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(records.len() * 256);
        let mut lines = Vec::with_capacity(records.len());
        for record in &records {
            let start = buf.len();
            encode(record, &mut buf);
            lines.push(start..buf.len());
        }
        let at = self.bytes;
        if let Err(e) = (&*self.file).write_all(&buf) {
            self.undo_partial_write(at, &buf);
            return Err(e);
        }
        self.bytes += buf.len() as u64;
        if let Some(compacting) = &mut self.compacting {
            compacting.tail.extend_from_slice(&buf);
        }
        for (record, line) in records.into_iter().zip(lines) {
            self.live.apply(record, Span::of(at, line));
        }
        Ok(self.compacting.is_none()
            && self.bytes > COMPACT_MIN.max(self.compacted_bytes * COMPACT_FACTOR))
    }

    /// After a write to `at` that failed part way (a full disk): cuts the piece of a line
    /// it left off, so that the file holds whole lines and the places of those written
    /// later are right (the live state keeps them, and a piece of a line in the middle of
    /// the file would read as corruption at the next start). If even that fails, the file
    /// keeps the piece and the journal follows the file as it is: its end, and the tail
    /// of a compaction under way, which must hold what the file holds after its snapshot.
    fn undo_partial_write(&mut self, at: u64, buf: &[u8]) {
        use std::io::{Seek, SeekFrom};
        let mut file = &*self.file;
        let cut = file
            .set_len(at)
            .and_then(|()| file.seek(SeekFrom::Start(at)));
        if cut.is_ok() {
            return;
        }
        if let Ok(end) = file.stream_position() {
            let written = end.saturating_sub(at).min(buf.len() as u64) as usize;
            if let Some(compacting) = &mut self.compacting {
                compacting.tail.extend_from_slice(&buf[..written]);
            }
            self.bytes = at + written as u64;
        }
    }

    /// The journal file, for syncing it from another thread (compaction replaces it).
    fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Starts a compaction: returns what its snapshot holds, for [`Snapshot::write`]; what
    /// is appended from now on is kept aside for [`Journal::finish_compaction`].
    fn begin_compaction(&mut self) -> Snapshot {
        self.compacting = Some(Compacting {
            from: self.bytes,
            tail: Vec::new(),
        });
        let mut items = Vec::new();
        let mut records = Vec::with_capacity(self.live.items.len());
        item_records(&self.live.items, &mut records);
        for record in &records {
            encode(record, &mut items);
        }
        Snapshot {
            file: self.file.clone(),
            calls: self
                .live
                .calls
                .iter()
                .map(|(k, s)| (k.clone(), *s))
                .collect(),
            items,
        }
    }

    /// Ends a compaction with `compacted`, the snapshot [`Snapshot::write`] wrote and
    /// synced: appends what came meanwhile, syncs that, and renames it over the journal;
    /// the live state then points into it. The caller then syncs the directory (before
    /// telling anyone their writes are synced). On an error the journal goes on in the
    /// old file, which has everything.
    fn finish_compaction(&mut self, compacted: Compacted) -> io::Result<()> {
        let Compacted { file, len, calls } = compacted;
        let Compacting { from, tail } = self.compacting.take().unwrap_or(Compacting {
            from: self.bytes,
            tail: Vec::new(),
        });
        // Each open call's line: written since the snapshot (in the tail, which follows
        // the snapshot), or else unchanged since, and in the snapshot. Both lists are in
        // key order: one walk finds them all. The live state is changed only once nothing
        // can fail any more.
        let mut placed = calls.iter().peekable();
        let mut moved = Vec::with_capacity(self.live.calls.len());
        for (key, span) in &self.live.calls {
            let at = if span.at >= from {
                len + (span.at - from)
            } else {
                while placed.next_if(|(k, _)| k < key).is_some() {}
                match placed.next_if(|(k, _)| k == key) {
                    Some((_, placed)) => placed.at,
                    None => {
                        return Err(io::Error::other(format!(
                            "the compacted journal lacks the record of call {key}"
                        )));
                    }
                }
            };
            moved.push(at);
        }
        if !tail.is_empty() {
            (&file).write_all(&tail)?;
            file.sync_data()?;
        }
        std::fs::rename(self.dir.join(TMP), self.dir.join(JOURNAL))?;
        self.file = Arc::new(file);
        for (span, at) in self.live.calls.values_mut().zip(moved) {
            span.at = at;
        }
        self.bytes = len + tail.len() as u64;
        self.compacted_bytes = self.bytes;
        Ok(())
    }

    /// Drops a compaction that failed: the journal goes on in its file.
    fn abandon_compaction(&mut self) {
        self.compacting = None;
        self.compacted_bytes = self.bytes;
    }
}

/// Where a line is in the journal file.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    at: u64,
    len: u32,
}

impl Span {
    /// The line at `line` of a buffer written at `at`.
    fn of(at: u64, line: std::ops::Range<usize>) -> Span {
        Span {
            at: at + line.start as u64,
            len: line.len() as u32,
        }
    }

    /// Reads the line from `file` into `line` (what it held is replaced).
    fn read(&self, file: &File, line: &mut Vec<u8>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        line.clear();
        line.resize(self.len as usize, 0);
        file.read_exact_at(line, self.at)
    }
}

/// The live state as the journal keeps it while running: where each open call's record
/// is in the file (a compaction reads it from there: an open call costs the journal a
/// few dozen bytes of memory, not its record's text), the undelivered events parsed
/// (they are few and short-lived).
#[derive(Default)]
struct Live {
    calls: BTreeMap<ShortStr, Span>,
    items: BTreeMap<u64, StoredItem>,
}

impl Live {
    /// Applies `record`, written at `span`.
    fn apply(&mut self, record: Record, span: Span) {
        match record {
            Record::Call { key, .. } => {
                self.calls.insert(key.as_str().into(), span);
            }
            Record::End { key } => {
                self.calls.remove(key.as_str());
            }
            other => apply_to_items(&mut self.items, other),
        }
    }

    /// The state, its calls' lines read from `file` and parsed.
    fn state(&self, file: &File) -> io::Result<State> {
        let mut state = State {
            calls: BTreeMap::new(),
            items: self.items.clone(),
        };
        let mut line = Vec::new();
        for span in self.calls.values() {
            span.read(file, &mut line)?;
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            if let Some(record) = decode(line) {
                state.apply(record);
            }
        }
        Ok(state)
    }
}

impl Snapshot {
    /// Writes and syncs the new journal (as `TMP`), without the journal's lock: the
    /// lines it reads are never written again (the file only grows). Line by line through
    /// a small buffer: a compaction holds one line of the file at a time, not the file.
    fn write(self, dir: &Path) -> io::Result<Compacted> {
        let Snapshot {
            file: from,
            mut calls,
            items,
        } = self;
        let mut len = 0;
        let file = write_snapshot(dir, |out| {
            let mut line = Vec::new();
            for (_, span) in &mut calls {
                span.read(&from, &mut line)?;
                out.write_all(&line)?;
                span.at = len;
                len += u64::from(span.len);
            }
            out.write_all(&items)?;
            len += items.len() as u64;
            Ok(())
        })?;
        Ok(Compacted { file, len, calls })
    }
}

/// Why a file of the state dir could not be opened: `what`, or that it is a symbolic link.
fn refused_or(what: &'static str, error: &io::Error) -> &'static str {
    if error.raw_os_error() == Some(libc::ELOOP) {
        "a symbolic link where its own file should be (refused; remove it)"
    } else {
        what
    }
}

/// Writes `journal.tmp` with what `fill` writes to it (through a buffer of
/// `SNAPSHOT_BUFFER` bytes) and syncs it; returns it open for appending. The file is made
/// new (whatever was there, a link included, is removed first, and a link planted
/// meanwhile makes the open fail), mode 0600.
fn write_snapshot(
    dir: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<File> {
    match std::fs::remove_file(dir.join(TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Written only here and then by appends at its end: the cursor always stays there
    // (lines are read back at their offsets, which leaves it where it is).
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(TMP))?;
    file.set_permissions(Permissions::from_mode(0o600))?;
    let mut out = BufWriter::with_capacity(SNAPSHOT_BUFFER, &file);
    fill(&mut out)?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    Ok(file)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `state` as a new journal (a temporary file, synced, renamed over the old one,
/// the directory synced); returns it open for appending, its size, and the live state
/// pointing into it.
fn write_compacted(dir: &Path, state: &State) -> io::Result<(File, u64, Live)> {
    let mut live = Live::default();
    let mut len = 0;
    let file = write_snapshot(dir, |out| {
        let mut line = Vec::new();
        for record in state.records() {
            line.clear();
            encode(&record, &mut line);
            out.write_all(&line)?;
            live.apply(record, Span::of(len, 0..line.len()));
            len += line.len() as u64;
        }
        Ok(())
    })?;
    std::fs::rename(dir.join(TMP), dir.join(JOURNAL))?;
    sync_dir(dir)?;
    Ok((file, len, live))
}

/// `<crc32 of json, 8 hex digits> <json>\n`
fn encode(record: &Record, buf: &mut Vec<u8>) {
    use std::io::Write;
    // The JSON goes in after room for its checksum, which is filled in once it is known.
    let start = buf.len();
    buf.extend_from_slice(b"00000000 ");
    serde_json::to_writer(&mut *buf, record).expect("records serialise");
    let crc = crc32(&buf[start + 9..]);
    write!(&mut buf[start..start + 8], "{crc:08x}").expect("8 hex digits fit");
    buf.push(b'\n');
}

fn decode(line: &[u8]) -> Option<Record> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    if line.get(8) != Some(&b' ') {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Replays a journal. A bad last line is a torn write and is dropped; a bad line before
/// the last moves the file aside and gives an empty state.
fn load(file: File, dir: &Path) -> Result<State, StoreError> {
    let mut state = State::default();
    let mut lines = BufReader::new(file).split(b'\n').peekable();
    let mut n = 0usize;
    while let Some(line) = lines.next() {
        n += 1;
        let line = line.map_err(|source| StoreError::Dir {
            dir: dir.to_owned(),
            what: "cannot read the journal",
            source,
        })?;
        match decode(&line) {
            Some(record) => state.apply(record),
            None if lines.peek().is_none() => {
                info!(
                    line = n,
                    "state journal: dropped an incomplete last record (the daemon stopped mid-write)"
                );
            }
            None => {
                let aside = dir.join(format!(
                    "{JOURNAL}.corrupt-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                let moved = std::fs::rename(dir.join(JOURNAL), &aside);
                error!(
                    line = n,
                    moved_to = %aside.display(),
                    moved = moved.is_ok(),
                    "state journal is corrupt: moved it aside and starting with no open calls \
                     (calls still up are picked up again from Asterisk)"
                );
                return Ok(State::default());
            }
        }
    }
    Ok(state)
}

/// CRC-32 (IEEE 802.3), as zlib computes it.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// What the sync thread does next.
enum SyncJob {
    /// Write `records` (a commit's, or `Done` marks), sync `file` (if any), then answer
    /// the waiters.
    Sync {
        file: Option<Arc<File>>,
        records: Vec<Record>,
        waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Write this snapshot of the live state as the new journal.
    Compact { snapshot: Snapshot },
}

/// Cloneable handle to the journal: writers append under a mutex (a write to the page
/// cache, microseconds), a thread of its own syncs to disk, so writing never waits for a
/// sync and only those who need the disk wait for one.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    syncs: std::sync::mpsc::Sender<SyncJob>,
}

/// What the writers and the sync thread share.
struct Shared {
    journal: Mutex<Option<Journal>>,
    dir: PathBuf,
    /// Syncs done so far (by the sync thread).
    synced: AtomicU64,
    failing: AtomicBool,
}

/// The sync thread; it ends once the last [`Store`] is dropped.
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    /// Waits until every sync asked for before is done.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Store {
    /// Opens the state dir and starts the sync thread. Returns the state found there.
    pub fn open(dir: &Path) -> Result<(Store, State, StoreThread), StoreError> {
        let (journal, state) = Journal::open(dir)?;
        let shared = Arc::new(Shared {
            journal: Mutex::new(Some(journal)),
            dir: dir.to_owned(),
            synced: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let (syncs, jobs) = std::sync::mpsc::channel();
        let sync_thread = SyncThread {
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("azb-journal-sync".into())
            .spawn(move || sync_thread.run(jobs))
            .map_err(|source| StoreError::Dir {
                dir: dir.to_owned(),
                what: "cannot start the journal's sync thread",
                source,
            })?;
        Ok((Store { shared, syncs }, state, StoreThread(thread)))
    }

    /// Appends `records` to the journal file (no sync): once this returns they survive a
    /// crash or SIGKILL of the daemon. Returns the file, for a sync.
    pub fn write(&self, records: Vec<Record>) -> Result<Arc<File>, StoreError> {
        let (file, snapshot) = self.shared.write(records)?;
        if let Some(snapshot) = snapshot {
            let _ = self.syncs.send(SyncJob::Compact { snapshot });
        }
        Ok(file)
    }

    /// Writes `records` and asks for a sync without waiting for it (the daemon's batches:
    /// on disk within about [`SYNC_INTERVAL`]).
    pub fn write_and_sync_soon(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let file = self.write(records)?;
        let _ = self.syncs.send(SyncJob::Sync {
            file: Some(file),
            records: Vec::new(),
            waiters: Vec::new(),
        });
        Ok(())
    }

    /// Writes `records` durably; returns once they are synced to disk. The sync thread
    /// writes them right before the sync: a crash while this waits finds them not written
    /// rather than written and not acted on (a "sending" mark must not outlive a crash
    /// that kept its event from being sent).
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.sync(records).await
    }

    /// Returns once everything written before is synced to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.sync(Vec::new()).await
    }

    async fn sync(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.syncs
            .send(SyncJob::Sync {
                file: None,
                records,
                waiters: vec![done],
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Syncs, then closes the journal and frees the state dir for the next daemon. Later
    /// writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let _ = self.flush().await;
        let closed = self
            .shared
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(closed);
    }

    /// How many times the journal was synced to disk so far.
    pub fn syncs_done(&self) -> u64 {
        self.shared.synced.load(Ordering::Relaxed)
    }

    /// Hands `records` to the sync thread, which writes them with its next round, no sync
    /// needed (for `Done` marks: losing one in a crash or power cut only means the event
    /// is looked at again after it).
    pub fn record(&self, records: Vec<Record>) {
        let _ = self.syncs.send(SyncJob::Sync {
            file: None,
            records,
            waiters: Vec::new(),
        });
    }
}

impl Shared {
    /// Appends `records`; returns the journal file (for a sync) and, when the journal has
    /// grown well past the live state, the snapshot to compact to.
    fn write(&self, records: Vec<Record>) -> Result<(Arc<File>, Option<Snapshot>), StoreError> {
        let mut guard = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(journal) = guard.as_mut() else {
            return Err(StoreError::Closed);
        };
        let result = journal.append(records);
        let file = journal.file();
        let snapshot = matches!(result, Ok(true)).then(|| journal.begin_compaction());
        drop(guard);
        match result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("state journal writable again");
                }
                Ok((file, snapshot))
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    error!(error = %e, "cannot write the state journal: calls go on, but what happens now would not survive a restart");
                }
                Err(StoreError::Write(e))
            }
        }
    }
}

/// A sync's result, for one more waiter.
fn copy(result: &Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(StoreError::Write(e)) => {
            Err(StoreError::Write(io::Error::new(e.kind(), e.to_string())))
        }
        Err(_) => Err(StoreError::Closed),
    }
}

/// The sync thread: once per round, writes the commits' records, syncs the journal, then
/// answers everyone waiting; at most one round per [`SYNC_INTERVAL`] (what arrives
/// meanwhile waits for the next). It also writes compactions.
struct SyncThread {
    shared: Arc<Shared>,
}

impl SyncThread {
    fn run(self, jobs: std::sync::mpsc::Receiver<SyncJob>) {
        let mut last_sync: Option<Instant> = None;
        while let Ok(first) = jobs.recv() {
            if let Some(last) = last_sync {
                let wait = (last + SYNC_INTERVAL).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            last_sync = Some(Instant::now());
            let mut files: Vec<Arc<File>> = Vec::new();
            let mut records = Vec::new();
            let mut waiters = Vec::new();
            for job in std::iter::once(first).chain(jobs.try_iter()) {
                match job {
                    // Done before any waiter of this round is answered: a rename is
                    // durable once its directory is synced.
                    SyncJob::Compact { snapshot } => self.compact(snapshot),
                    SyncJob::Sync {
                        file,
                        records: r,
                        waiters: w,
                    } => {
                        files.extend(file);
                        records.extend(r);
                        waiters.extend(w);
                    }
                }
            }
            let mut result = Ok(());
            if !records.is_empty() || !waiters.is_empty() {
                // The records handed over (a compaction it starts holds them synced),
                // then, for those waiting, the file as it is now, which `flush` waits for.
                match self.shared.write(records) {
                    Ok((file, snapshot)) => {
                        if !waiters.is_empty() {
                            files.push(file);
                        }
                        if let Some(snapshot) = snapshot {
                            self.compact(snapshot);
                        }
                    }
                    Err(e) => result = Err(e),
                }
            }
            // Compaction may have replaced the file: sync each distinct one once.
            let mut distinct: Vec<Arc<File>> = Vec::new();
            for f in files {
                if !distinct.iter().any(|g| Arc::ptr_eq(&f, g)) {
                    distinct.push(f);
                }
            }
            for f in &distinct {
                self.shared.synced.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = f.sync_data() {
                    error!(error = %e, "cannot sync the state journal");
                    result = Err(StoreError::Write(e));
                }
            }
            for w in waiters {
                let _ = w.send(copy(&result));
            }
        }
    }

    /// Writes and syncs the snapshot without the journal's lock, then takes it to add
    /// what was appended meanwhile and put the new file in place.
    fn compact(&self, snapshot: Snapshot) {
        let dir = &self.shared.dir;
        let written = snapshot.write(dir);
        let bytes = written.as_ref().map_or(0, |c| c.len);
        let mut guard = self
            .shared
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(journal) = guard.as_mut() else {
            // Closed meanwhile.
            let _ = std::fs::remove_file(dir.join(TMP));
            return;
        };
        let result = written.and_then(|compacted| journal.finish_compaction(compacted));
        if result.is_err() {
            journal.abandon_compaction();
            let _ = std::fs::remove_file(dir.join(TMP));
        }
        drop(guard);
        match result {
            Ok(()) => match sync_dir(dir) {
                Ok(()) => debug!(bytes, "state journal compacted"),
                Err(e) => {
                    error!(error = %e, "cannot sync the state dir after compacting the journal")
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot compact the state journal; it goes on in the old file until the next try")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zammad::cti::{CallId, CtiEventKind, Direction};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "azb-store-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The undelivered items: (seq, being sent).
    fn undelivered(state: &State) -> Vec<(u64, bool)> {
        state.items.iter().map(|(s, i)| (*s, i.sending)).collect()
    }

    fn item(seq: u64, event: CtiEventKind) -> Record {
        Record::Item {
            seq,
            request: CtiRequest {
                event,
                direction: Direction::In,
                call_id: CallId(compact_str::format_compact!("1.{seq}")),
                from: "4930555".into(),
                to: "800".into(),
                user: None,
                queue: None,
                answering_number: None,
                cause: None,
            },
        }
    }

    #[test]
    fn crc_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn state_survives_reopening_and_is_compacted() {
        let dir = temp_dir("reopen");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            item(1, CtiEventKind::NewCall),
            item(2, CtiEventKind::Answer),
        ])
        .unwrap();
        j.append(vec![
            Record::Sending { seq: 1 },
            Record::Done { seq: 1 },
            Record::Sending { seq: 2 },
        ])
        .unwrap();
        j.append(vec![item(3, CtiEventKind::Hangup)]).unwrap();
        drop(j);
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(undelivered(&j.state().unwrap()), [(2, true), (3, false)]);
        assert_eq!(j.state().unwrap().next_seq(), 4);
        // Compacted: one line per item plus the Sending mark.
        let text = std::fs::read_to_string(dir.join(JOURNAL)).unwrap();
        assert_eq!(text.lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = temp_dir("torn");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            item(1, CtiEventKind::NewCall),
            item(2, CtiEventKind::Hangup),
        ])
        .unwrap();
        drop(j);
        let path = dir.join(JOURNAL);
        let text = std::fs::read(&path).unwrap();
        // Cut the last record in the middle, as a crash mid-write would.
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(
            j.state().unwrap().items.keys().copied().collect::<Vec<_>>(),
            [1]
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_journal_is_moved_aside_and_the_daemon_starts_fresh() {
        let dir = temp_dir("corrupt");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            item(1, CtiEventKind::NewCall),
            item(2, CtiEventKind::Hangup),
        ])
        .unwrap();
        drop(j);
        let path = dir.join(JOURNAL);
        let mut text = std::fs::read(&path).unwrap();
        text[12] ^= 0x20; // a flipped bit in the first record
        std::fs::write(&path, &text).unwrap();
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(j.state().unwrap(), State::default());
        let aside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("journal.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sequence_numbers_near_the_top_are_renumbered_and_never_wrap() {
        let dir = temp_dir("seq");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            item(u64::MAX - 1, CtiEventKind::NewCall),
            item(u64::MAX, CtiEventKind::Hangup),
            Record::Sending { seq: u64::MAX },
        ])
        .unwrap();
        assert_eq!(
            j.state().unwrap().next_seq(),
            u64::MAX,
            "saturates, never wraps to 0"
        );
        drop(j);
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(undelivered(&j.state().unwrap()), [(1, false), (2, true)]);
        let state = j.state().unwrap();
        let ids: Vec<&str> = state
            .items
            .values()
            .map(|i| &*i.request.call_id.0)
            .collect();
        assert_eq!(
            ids,
            [format!("1.{}", u64::MAX - 1), format!("1.{}", u64::MAX)]
        );
        assert_eq!(j.state().unwrap().next_seq(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_planted_in_the_state_dir_are_never_followed_and_files_are_0600() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = temp_dir("symlink");
        let victim = temp_dir("symlink-victim");
        std::fs::write(&victim, b"precious").unwrap();
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![item(1, CtiEventKind::NewCall)]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(JOURNAL)), 0o600);
        assert_eq!(mode(&dir.join("lock")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        drop(j);
        // A compaction (every open makes one) goes through journal.tmp.
        symlink(&victim, dir.join(TMP)).unwrap();
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(undelivered(&j.state().unwrap()), [(1, false)]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!dir.join(TMP).exists());
        drop(j);
        // A link where the journal or the lock should be is refused, the target untouched.
        for name in [JOURNAL, "lock"] {
            let real = dir.join(format!("{name}.real"));
            std::fs::rename(dir.join(name), &real).unwrap();
            symlink(&victim, dir.join(name)).unwrap();
            let err = Journal::open(&dir).err().expect("refused").to_string();
            assert!(
                err.contains("a symbolic link where its own file should be"),
                "{err}"
            );
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
            std::fs::remove_file(dir.join(name)).unwrap();
            std::fs::rename(&real, dir.join(name)).unwrap();
        }
        assert_eq!(
            undelivered(&Journal::open(&dir).unwrap().0.state().unwrap()),
            [(1, false)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&victim).unwrap();
    }

    #[test]
    fn an_unwritable_dir_is_a_clear_error() {
        // A file where the directory should be.
        let file = temp_dir("notadir");
        std::fs::write(&file, b"x").unwrap();
        let err = Journal::open(&file).err().expect("fails").to_string();
        assert!(err.starts_with("state.dir "), "{err}");
        assert!(err.contains("cannot create it"), "{err}");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn one_daemon_per_state_dir() {
        let dir = temp_dir("lock");
        let first = Journal::open(&dir).unwrap().0;
        let err = Journal::open(&dir)
            .err()
            .expect("the second is refused")
            .to_string();
        assert!(err.contains("in use by another"), "{err}");
        drop(first);
        Journal::open(&dir).expect("free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn commits_from_many_tasks_are_all_durable() {
        let dir = temp_dir("many");
        let (store, state, thread) = Store::open(&dir).unwrap();
        assert_eq!(state, State::default());
        let tasks: Vec<_> = (1..=50)
            .map(|seq| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.commit(vec![item(seq, CtiEventKind::NewCall)]).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        store.record(vec![Record::Done { seq: 7 }]);
        drop(store);
        thread.join();
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(j.state().unwrap().items.len(), 49);
        assert!(!j.state().unwrap().items.contains_key(&7));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn syncs_are_at_most_one_per_interval_and_cover_every_write() {
        let dir = temp_dir("paced");
        let (store, _, thread) = Store::open(&dir).unwrap();
        let started = Instant::now();
        // A write every millisecond: without the interval that is a sync each.
        for seq in 1..=100 {
            store
                .write_and_sync_soon(vec![item(seq, CtiEventKind::NewCall)])
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        store.flush().await.unwrap();
        let most = started.elapsed().as_millis() / SYNC_INTERVAL.as_millis() + 2;
        let syncs = u128::from(store.syncs_done());
        assert!(syncs <= most, "{syncs} syncs, at most {most} expected");
        drop(store);
        thread.join();
        assert_eq!(
            Journal::open(&dir).unwrap().0.state().unwrap().items.len(),
            100
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_is_appended_during_a_compaction_is_kept() {
        let dir = temp_dir("compact-meanwhile");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            item(1, CtiEventKind::NewCall),
            item(2, CtiEventKind::Hangup),
            Record::Done { seq: 1 },
            call("9.1", 4),
            call("9.2", 4),
            call("9.3", 4),
            call("9.5", 4),
        ])
        .unwrap();
        let snapshot = j.begin_compaction();
        // Writers go on while the sync thread writes the snapshot: a call rewritten, one
        // ended, one new. (9.5, unchanged, is found in the snapshot past the others.)
        j.append(vec![
            item(3, CtiEventKind::NewCall),
            Record::Sending { seq: 2 },
            call("9.2", 6),
            Record::End { key: "9.3".into() },
        ])
        .unwrap();
        let compacted = snapshot.write(&dir).unwrap();
        j.append(vec![Record::Done { seq: 3 }, call("9.4", 4)])
            .unwrap();
        j.finish_compaction(compacted).unwrap();
        sync_dir(&dir).unwrap();
        j.append(vec![item(4, CtiEventKind::Answer), call("9.1", 6)])
            .unwrap();
        let live = j.state().unwrap();
        let states: Vec<(&str, u64)> = live
            .calls
            .iter()
            .map(|(k, c)| {
                (
                    k.as_str(),
                    serde_json::to_value(c).unwrap()["channels"][0]["state"]
                        .as_u64()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(states, [("9.1", 6), ("9.2", 6), ("9.4", 4), ("9.5", 4)]);
        // A second compaction reads each call's line where the first put it.
        let again = j.begin_compaction().write(&dir).unwrap();
        j.finish_compaction(again).unwrap();
        assert_eq!(j.state().unwrap(), live);
        drop(j);
        let text = std::fs::read_to_string(dir.join(JOURNAL)).unwrap();
        // Four calls, item 2 and its mark, item 4.
        assert_eq!(text.lines().count(), 7, "{text}");
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(j.state().unwrap(), live);
        assert_eq!(undelivered(&j.state().unwrap()), [(2, true), (4, false)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_cut_short_leaves_whole_lines_in_their_places() {
        let dir = temp_dir("cut-short");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![call("9.1", 4)]).unwrap();
        // A write that got only part of its bytes out, as on a full disk.
        let at = j.bytes;
        let mut buf = Vec::new();
        encode(&call("9.2", 4), &mut buf);
        (&*j.file).write_all(&buf[..buf.len() / 2]).unwrap();
        j.undo_partial_write(at, &buf);
        j.append(vec![call("9.3", 6)]).unwrap();
        let state = j.state().unwrap();
        assert_eq!(state.calls.keys().collect::<Vec<_>>(), ["9.1", "9.3"]);
        drop(j);
        // No piece of a line in the middle: the journal is not taken for corrupt.
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(j.state().unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A call's record as the tracker writes it, `state` being its caller's channel state.
    fn call(key: &str, state: u8) -> Record {
        let json = format!(
            r#"{{"call_id":"{key}","direction":"in","origin":"{key}","from":"4930555","to":"800","queue":null,"in_queue":false,"agent":null,"legs":[],"answered":false,"outcome":{{"answered":false,"forwarded":false,"caller_gave_up":false,"queue_unserved":false,"best_dial":null,"q850":null}},"channels":[{{"uniqueid":"{key}","name":"PJSIP/trunk-1","linkedid":"{key}","state":{state},"caller_num":"+4930555"}}],"last_event_at":1}}"#
        );
        Record::Call {
            key: key.into(),
            call: Box::new(serde_json::from_str(&json).unwrap()),
        }
    }

    #[test]
    fn open_calls_are_kept_as_written_and_read_back_the_same() {
        let dir = temp_dir("calls");
        let mut j = Journal::open(&dir).unwrap().0;
        j.append(vec![
            call("1.1", 4),
            call("1.2", 4),
            item(1, CtiEventKind::NewCall),
        ])
        .unwrap();
        j.append(vec![call("1.1", 6), Record::End { key: "1.2".into() }])
            .unwrap();
        let Record::Call { call: want, .. } = call("1.1", 6) else {
            unreachable!()
        };
        let live = j.state().unwrap();
        assert_eq!(live.calls.keys().collect::<Vec<_>>(), ["1.1"]);
        assert_eq!(live.calls["1.1"], *want, "the last record of the call");
        assert_eq!(undelivered(&live), [(1, false)]);
        // Compacted on the next open: one line for the call, one for the event.
        drop(j);
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(j.state().unwrap(), live);
        let text = std::fs::read_to_string(dir.join(JOURNAL)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_store_compacts_beside_its_writers() {
        let dir = temp_dir("compact-store");
        let (store, _, thread) = Store::open(&dir).unwrap();
        // Past COMPACT_MIN many times over, with at most 10 items live at any time.
        let mut written = 0;
        for seq in 1..=40_000 {
            let mut records = vec![item(seq, CtiEventKind::NewCall)];
            if seq > 10 {
                records.push(Record::Done { seq: seq - 10 });
            }
            written += records.len();
            store.write_and_sync_soon(records).unwrap();
        }
        store.flush().await.unwrap();
        let size = std::fs::metadata(dir.join(JOURNAL)).unwrap().len();
        assert!(
            size < 2 * COMPACT_MIN,
            "{size} bytes after {written} records"
        );
        drop(store);
        thread.join();
        let j = Journal::open(&dir).unwrap().0;
        assert_eq!(
            j.state().unwrap().items.keys().copied().collect::<Vec<_>>(),
            (39_991..=40_000).collect::<Vec<_>>()
        );
        assert!(!dir.join(TMP).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_commit_is_written_by_the_sync_that_covers_it() {
        use futures_util::FutureExt;
        let dir = temp_dir("commit-late");
        let (store, _, thread) = Store::open(&dir).unwrap();
        store
            .write_and_sync_soon(vec![item(1, CtiEventKind::Hangup)])
            .unwrap();
        store.flush().await.unwrap();
        // The next sync is an interval away: the mark waits for it unwritten (a crash now
        // finds no mark), while a plain write goes in at once.
        let pending = store
            .commit(vec![Record::Sending { seq: 1 }])
            .now_or_never();
        assert!(pending.is_none(), "the commit waits for the next sync");
        store.write(vec![item(2, CtiEventKind::NewCall)]).unwrap();
        store.flush().await.unwrap();
        let text = std::fs::read(dir.join(JOURNAL)).unwrap();
        let ops: Vec<Record> = text.split(|b| *b == b'\n').filter_map(decode).collect();
        assert_eq!(
            ops,
            [
                item(1, CtiEventKind::Hangup),
                item(2, CtiEventKind::NewCall),
                Record::Sending { seq: 1 }
            ]
        );
        drop(store);
        thread.join();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
