//! Printing: compact human tables and one JSON object per line, and the
//! outputs they go to (stdout, `--log`), whose failures are counted rather
//! than fatal.
//!
//! Everything teardown prints on stdout goes through a [`LineOutput`]: whole
//! lines, written with `write(2)` directly (no buffer that could hold half a
//! line), and errors returned rather than panicked on, as `println!` does.
//! What an error means is the caller's policy:
//!
//! - the reader is gone (`EPIPE`, e.g. `| head -1`): the program ends
//!   quietly and successfully, as `head`-style pipelines expect;
//! - anything else (`ENOSPC`, `EIO`, ...): `teardown run` keeps monitoring
//!   and counts the lines lost ([`Sink`]); `teardown replay`, which has
//!   nothing but its output, stops with a one-line error.

use std::{
    collections::VecDeque,
    fmt::Display,
    fs::File,
    io::{self, Seek as _, SeekFrom, Write as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use teardown_common::counters::{Counter, Counters};

/// Writes one line on stderr. Unlike `eprintln!`, which panics when stderr
/// is closed or full (e.g. `2>&1 | head -1`), a failure drops the line:
/// there is nowhere left to report it.
pub fn say(line: impl Display) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Writes one line on stdout, for commands whose output is a report
/// (`teardown bench`): unlike `println!`, which panics when stdout is
/// closed or full (`| head`), a failure drops the line and the command
/// goes on to its end (its JSON report, its exit status).
pub fn print_line(line: impl Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// `println!` through [`print_line`].
macro_rules! outln {
    () => {
        $crate::report::output::print_line("")
    };
    ($($arg:tt)*) => {
        $crate::report::output::print_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Bytes of lines gathered before they are written: a burst of records
/// (thousands when a flood's half-open records end) goes out in a few large
/// writes, rather than one per line or one buffer of them all.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Appends `line` and its newline to `text`.
pub fn push_line(text: &mut String, line: impl Display) {
    use std::fmt::Write as _;
    let _ = writeln!(text, "{line}");
}

/// Lines that could not be written whole.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct WriteError {
    /// Lines of the batch not written (a line cut short counts as lost).
    pub lost: u64,
    pub error: io::Error,
}

impl WriteError {
    /// Whether the reader has gone away (`EPIPE`): nothing written from now
    /// on can reach anyone.
    pub fn reader_gone(&self) -> bool {
        self.error.kind() == io::ErrorKind::BrokenPipe
    }
}

/// An output of whole lines: stdout, or a file such as `--log`.
pub struct LineOutput {
    file: File,
    /// A failed write left the start of a line behind that could not be
    /// taken back (see [`LineOutput::take_back`]): the next write starts
    /// with a newline.
    cut: bool,
}

impl LineOutput {
    /// stdout, through a duplicate of its descriptor: it shares the file
    /// offset and flags with fd 1, so lines land where the shell sent them,
    /// but writes bypass `std::io::Stdout`'s line buffer, which on an error
    /// would keep (and later emit) whatever part of a line it held.
    pub fn stdout() -> io::Result<LineOutput> {
        Ok(LineOutput::file(File::from(
            io::stdout().as_fd().try_clone_to_owned()?,
        )))
    }

    pub fn file(file: File) -> LineOutput {
        LineOutput { file, cut: false }
    }

    /// A log file such as `--log`, opened for appending (created if need
    /// be): at the start of a run, and again at every SIGHUP.
    pub fn append_to(path: &Path) -> io::Result<LineOutput> {
        Ok(LineOutput::file(
            File::options().create(true).append(true).open(path)?,
        ))
    }

    /// Writes `text`, whole lines each ending in `\n`, and returns how many
    /// lines did not get out whole if any did not.
    ///
    /// A write that fails partway (a disk filling up gives a short write,
    /// then `ENOSPC`) may leave the start of a line behind. A record cut in
    /// two must never be glued to the next one, which would corrupt both, so
    /// the fragment is taken back (the file truncated to the end of the last
    /// whole line) where that is possible, and otherwise ended by a newline
    /// before the next write: a pipe or a terminal cannot be taken back, and
    /// a lone fragment there is at worst one unreadable line.
    pub fn write(&mut self, text: &str) -> Result<(), WriteError> {
        debug_assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        let prefix: &[u8] = if self.cut { b"\n" } else { b"" };
        let mut written = 0;
        let mut failure = None;
        for part in [prefix, text.as_bytes()] {
            let mut done = 0;
            while done < part.len() {
                match (&self.file).write(&part[done..]) {
                    Ok(0) => {
                        failure = Some(io::Error::from(io::ErrorKind::WriteZero));
                        break;
                    }
                    Ok(n) => done += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            written += done;
            if failure.is_some() {
                break;
            }
        }
        if written > 0 {
            // The newline ending an earlier fragment, if one was owed, is out.
            self.cut = false;
        }
        let Some(error) = failure else {
            return Ok(());
        };
        let text_written = written.saturating_sub(prefix.len());
        let whole = text.as_bytes()[..text_written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        let lost = text.as_bytes()[whole..]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        let partial = (text_written - whole) as u64;
        if partial > 0 && !self.take_back(partial) {
            self.cut = true;
        }
        Err(WriteError { lost, error })
    }

    /// Removes the last `partial` bytes written, the start of a line cut
    /// short, so that the output keeps whole lines only. Only a regular file
    /// whose end is where this wrote last can be taken back: the file is
    /// truncated there, and the offset moved back too, as a file opened
    /// without `O_APPEND` (`> file`) would otherwise get a hole of zeros
    /// at the next write. Truncating frees space rather than taking it, so
    /// it works on a full disk. Returns whether the fragment is gone.
    fn take_back(&mut self, partial: u64) -> bool {
        let Ok(metadata) = self.file.metadata() else {
            return false;
        };
        let Ok(end) = (&self.file).stream_position() else {
            return false;
        };
        // Someone else writing the same file after us: its bytes stay.
        if !metadata.is_file() || metadata.len() != end || end < partial {
            return false;
        }
        let good = end - partial;
        self.file.set_len(good).is_ok() && (&self.file).seek(SeekFrom::Start(good)).is_ok()
    }
}

/// Warnings about one output come at most this often: an output that fails
/// and recovers over and over (a disk kept nearly full) must not flood
/// stderr, which may well be logged to the same disk.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// An output `teardown run` keeps going without: a failure is said once on
/// stderr, the lines it costs are counted, and every later write tries
/// again, so writing resumes by itself when the disk has room again (and
/// stderr says so, with the count of lines lost).
pub struct Sink {
    /// In messages, e.g. `the connection log /var/log/teardown.json`.
    name: String,
    /// The JSON key and Prometheus label: `stdout` or `log`.
    pub key: &'static str,
    out: LineOutput,
    /// Whether the reader going away ends the run (stdout), or is one more
    /// failure to count (a log that is a FIFO).
    reader_gone_ends: bool,
    /// Lines lost since the start.
    lost: u64,
    /// Lines lost since the last "written again" note.
    lost_unreported: u64,
    failing: bool,
    /// Whether the current failure was announced (see [`WARN_EVERY`]); a
    /// recovery is announced only after an announced failure.
    announced: bool,
    warned_at: Option<Instant>,
    closed: bool,
}

impl Sink {
    pub fn new(key: &'static str, name: String, out: LineOutput, reader_gone_ends: bool) -> Sink {
        Sink {
            name,
            key,
            out,
            reader_gone_ends,
            lost: 0,
            lost_unreported: 0,
            failing: false,
            announced: false,
            warned_at: None,
            closed: false,
        }
    }

    /// Writes whole lines (`text` ends in a newline); failures are counted
    /// and said, never returned. Nothing is written once the reader is gone.
    pub fn write(&mut self, text: &str) {
        if self.closed || text.is_empty() {
            return;
        }
        match self.out.write(text) {
            Ok(()) => self.recovered(),
            Err(err) if err.reader_gone() && self.reader_gone_ends => self.closed = true,
            Err(err) => self.failed(&err),
        }
    }

    fn failed(&mut self, err: &WriteError) {
        self.lost += err.lost;
        self.lost_unreported += err.lost;
        if self.failing {
            return;
        }
        self.failing = true;
        self.announced = self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if self.announced {
            self.warned_at = Some(Instant::now());
            say(format_args!(
                "teardown: warning: cannot write {}: {}; monitoring goes on, lines not written are counted as lost (lines_lost.{}), and writing is retried with every new line",
                self.name, err.error, self.key
            ));
        }
    }

    fn recovered(&mut self) {
        if !self.failing {
            return;
        }
        self.failing = false;
        if self.announced {
            say(format_args!(
                "teardown: {} is written again; {} lines were lost",
                self.name, self.lost_unreported
            ));
            self.lost_unreported = 0;
        }
    }

    /// Opens `path` again and writes there from now on (SIGHUP, after
    /// logrotate renamed the file: the lines written so far stay in the
    /// renamed file, the next ones go to a new file at `path`). If `path`
    /// cannot be opened, the current file is kept. Says which on stderr, in
    /// one line.
    pub fn reopen(&mut self, path: &Path) {
        match LineOutput::append_to(path) {
            Ok(out) => {
                // The old file is closed here: every line given to it so far
                // was written (or counted lost) by `write`, which keeps no
                // buffer.
                self.out = out;
                say(format_args!(
                    "teardown: SIGHUP: reopened {}; the next records go there",
                    self.name
                ));
            }
            Err(err) => say(format_args!(
                "teardown: warning: SIGHUP: cannot reopen {}: {err}; records keep going to the file already open",
                self.name
            )),
        }
    }

    /// Lines lost since the start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// At the end of the run: an output still failing says how many lines
    /// it lost since it was last written, as no "written again" note will.
    pub fn finish(&mut self) {
        if self.failing && !self.closed && self.lost_unreported > 0 {
            say(format_args!(
                "teardown: {} still cannot be written at exit; {} lines were lost since it failed",
                self.name, self.lost_unreported
            ));
            self.lost_unreported = 0;
        }
    }

    /// Whether the reader has gone away (stdout only): the run should end.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

/// Bytes of lines a [`QueuedSink`] holds for a reader that is not keeping
/// up (a paused `less`, a slow collector at the other end of a pipe): about
/// fifty thousand records. Past that, lines are counted as lost.
pub const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// A [`Sink`] written by a thread of its own, behind a queue of at most
/// [`QUEUE_BYTES`]: `teardown run`'s outputs. A write to a pipe or a
/// terminal blocks while its reader does not read; written from the
/// monitoring loop, that would stop the loop itself: no record would end,
/// no event be drained (the ring buffer then overflows), no Prometheus
/// scrape be answered. Here the loop only queues the lines; a reader that
/// falls further behind than the queue costs lines, counted in
/// `lines_lost` and said on stderr, not the watch.
pub struct QueuedSink {
    /// The JSON key and Prometheus label: `stdout` or `log`.
    pub key: &'static str,
    name: String,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Bytes the queue may hold ([`QUEUE_BYTES`], less in tests).
    capacity: usize,
    /// Lines dropped because the queue was full.
    dropped: u64,
    warned_at: Option<Instant>,
    /// Closed by the caller ([`QueuedSink::close`]).
    closed: bool,
}

/// What the monitoring loop and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued, or the end asked for.
    work: Condvar,
    /// Signalled when the writer has finished a job and found the queue
    /// empty, and when it has ended.
    idle: Condvar,
    /// The sink's own count of lines it could not write.
    sink_lost: AtomicU64,
    /// The reader went away (stdout): the run should end.
    reader_gone: AtomicBool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    bytes: usize,
    /// The writer holds a job it took from the queue.
    busy: bool,
    /// The lines of that job.
    busy_lines: u64,
    /// No more jobs will come: the writer ends once the queue is empty.
    ending: bool,
    /// The writer has ended.
    ended: bool,
}

enum Job {
    Lines(String),
    Reopen(PathBuf),
}

/// Counts the lines (newlines) of `text`.
fn line_count(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
}

impl QueuedSink {
    /// Starts the writer thread for `sink`.
    pub fn start(sink: Sink) -> io::Result<QueuedSink> {
        QueuedSink::with_capacity(sink, QUEUE_BYTES)
    }

    fn with_capacity(mut sink: Sink, capacity: usize) -> io::Result<QueuedSink> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            sink_lost: AtomicU64::new(0),
            reader_gone: AtomicBool::new(false),
        });
        let (key, name) = (sink.key, sink.name.clone());
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("teardown-{key}"))
                .spawn(move || {
                    while let Some(job) = shared.next_job() {
                        match job {
                            Job::Lines(text) => sink.write(&text),
                            Job::Reopen(path) => sink.reopen(&path),
                        }
                        shared.sink_lost.store(sink.lost(), Ordering::Relaxed);
                        if sink.closed() {
                            shared.reader_gone.store(true, Ordering::Relaxed);
                        }
                        shared.job_done();
                    }
                    sink.finish();
                    shared.writer_ended();
                })?
        };
        Ok(QueuedSink {
            key,
            name,
            shared,
            writer: Some(writer),
            capacity,
            dropped: 0,
            warned_at: None,
            closed: false,
        })
    }

    /// Queues whole lines (`text` ends in a newline). Never waits for the
    /// writer: when the queue is full, `text`'s lines are counted as lost.
    pub fn write(&mut self, text: &str) {
        if self.closed() || text.is_empty() {
            return;
        }
        let mut queue = self.shared.lock();
        if queue.bytes + text.len() > self.capacity && !queue.jobs.is_empty() {
            drop(queue);
            self.dropped += line_count(text);
            if self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                self.warned_at = Some(Instant::now());
                say(format_args!(
                    "teardown: warning: {} is not read as fast as lines come ({} KiB wait for its reader); monitoring goes on, lines past that are counted as lost (lines_lost.{})",
                    self.name,
                    self.capacity / 1024,
                    self.key
                ));
            }
            return;
        }
        queue.bytes += text.len();
        queue.jobs.push_back(Job::Lines(text.to_string()));
        drop(queue);
        self.shared.work.notify_one();
    }

    /// Opens `path` again once the lines queued so far are written (see
    /// [`Sink::reopen`], which says on stderr what it did).
    pub fn reopen(&mut self, path: &Path) {
        self.shared
            .lock()
            .jobs
            .push_back(Job::Reopen(path.to_path_buf()));
        self.shared.work.notify_one();
    }

    /// Lines lost since the start: not written, or not queued.
    pub fn lost(&self) -> u64 {
        self.dropped + self.shared.sink_lost.load(Ordering::Relaxed)
    }

    /// Whether the reader has gone away (stdout only): the run should end.
    pub fn closed(&self) -> bool {
        self.closed || self.shared.reader_gone.load(Ordering::Relaxed)
    }

    /// Marks the reader gone, for a failure seen elsewhere (the dashboard
    /// drawing on the same terminal).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Waits until everything queued so far is written, at most `patience`;
    /// returns whether it was.
    pub fn flush(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let mut queue = self.shared.lock();
        while (!queue.jobs.is_empty() || queue.busy) && !queue.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = match self.shared.idle.wait_timeout(queue, left) {
                Ok((queue, _)) => queue,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// At the end of the run: writes what is queued, waiting at most
    /// `patience` for a reader that does not read, and counts (and says)
    /// the lines that could not be written in that time.
    pub fn finish(&mut self, patience: Duration) {
        self.shared.lock().ending = true;
        self.shared.work.notify_one();
        if self.flush(patience) {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
            return;
        }
        // The writer is blocked in a write: it is left to the process's
        // exit (its handle dropped, so nothing waits for it again), and
        // what it still holds is lost.
        self.writer = None;
        let queue = self.shared.lock();
        let unwritten: u64 = if queue.busy { queue.busy_lines } else { 0 }
            + queue
                .jobs
                .iter()
                .map(|job| match job {
                    Job::Lines(text) => line_count(text),
                    Job::Reopen(_) => 0,
                })
                .sum::<u64>();
        drop(queue);
        if !self.closed() {
            say(format_args!(
                "teardown: {} was not read for {:?} at exit; {} queued lines were not written",
                self.name, patience, unwritten
            ));
        }
        self.dropped += unwritten;
    }
}

/// How long a [`QueuedSink`] dropped without [`QueuedSink::finish`] (the
/// run ended by an error) waits for its lines to be written.
const DROP_PATIENCE: Duration = Duration::from_secs(1);

impl Drop for QueuedSink {
    fn drop(&mut self) {
        // The writer ends once the queue is written. Without `finish`,
        // the run is ending on an error: the lines queued before it (the
        // records just printed) get a moment to go out, not more, as the
        // error must still be said.
        self.shared.lock().ending = true;
        self.shared.work.notify_one();
        if let Some(writer) = self.writer.take()
            && self.flush(DROP_PATIENCE)
        {
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panicking writer thread cannot leave the queue half-changed
        // (each change is one push or pop): its state stays usable.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next job for the writer, or `None` once the end is asked for
    /// and the queue is empty.
    fn next_job(&self) -> Option<Job> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                queue.busy_lines = 0;
                if let Job::Lines(text) = &job {
                    queue.bytes -= text.len();
                    queue.busy_lines = line_count(text);
                }
                queue.busy = true;
                return Some(job);
            }
            if queue.ending {
                return None;
            }
            queue = match self.work.wait(queue) {
                Ok(queue) => queue,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    fn job_done(&self) {
        let mut queue = self.lock();
        queue.busy = false;
        if queue.jobs.is_empty() {
            self.idle.notify_all();
        }
    }

    fn writer_ended(&self) {
        self.lock().ended = true;
        self.idle.notify_all();
    }
}

/// A count in at most six characters: 999, 12.3k, 4.56M.
pub fn short_count(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude < 1_000.0 {
        // A decimal says something below 10/s (0.5 vs 1); above, it is noise.
        if magnitude >= 10.0 || value.fract() == 0.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.1}")
        }
    } else if magnitude < 1_000_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else if magnitude < 1_000_000_000.0 {
        format!("{:.2}M", value / 1_000_000.0)
    } else {
        format!("{:.2}G", value / 1_000_000_000.0)
    }
}

/// Every counter with its total, one per line, aligned.
pub fn totals_table(counters: &Counters) -> String {
    let width = Counter::ALL
        .iter()
        .map(|c| c.key().len())
        .max()
        .unwrap_or(0);
    let mut table = String::new();
    for counter in Counter::ALL {
        table.push_str(&format!(
            "  {:<width$}  {:>14}\n",
            counter.key(),
            counters.get(*counter)
        ));
    }
    table
}

/// Every counter with its totals for what arrived (`in`) and what the host
/// sent (`out`), one per line, aligned under a header.
pub fn totals_table_both(received: &Counters, sent: &Counters) -> String {
    let width = Counter::ALL
        .iter()
        .map(|c| c.key().len())
        .max()
        .unwrap_or(0);
    let mut table = format!("  {:<width$}  {:>14}  {:>14}\n", "", "in", "out");
    for counter in Counter::ALL {
        table.push_str(&format!(
            "  {:<width$}  {:>14}  {:>14}\n",
            counter.key(),
            received.get(*counter),
            sent.get(*counter)
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::Read as _,
        os::fd::{FromRawFd as _, OwnedFd},
    };

    /// A pipe: (read end, write end), with `flags` (e.g. `O_NONBLOCK`) on both.
    fn pipe(flags: i32) -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two new descriptors, owned here from now on.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned only here.
        unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("teardown-output-{name}-{}", std::process::id()))
    }

    #[test]
    fn a_reopened_log_goes_on_in_a_new_file_and_the_renamed_one_keeps_its_lines() {
        let path = temp_path("reopen");
        let rotated = temp_path("reopen-rotated");
        let _ = std::fs::remove_file(&path);
        let mut sink = Sink::new(
            "log",
            "the test log".to_string(),
            LineOutput::append_to(&path).expect("opening the log"),
            false,
        );
        sink.write("one\n");
        std::fs::rename(&path, &rotated).expect("rotating the log");
        sink.write("two\n");
        sink.reopen(&path);
        sink.write("three\n");
        let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("reading");
        assert_eq!(read(&rotated), "one\ntwo\n");
        assert_eq!(read(&path), "three\n");
        assert_eq!(sink.lost(), 0);
        // A path that cannot be opened keeps the file already open.
        let _ = std::fs::remove_file(&path);
        sink.reopen(std::path::Path::new("/nonexistent-dir/teardown.log"));
        sink.write("four\n");
        assert_eq!(read(&rotated), "one\ntwo\n");
        assert_eq!(sink.lost(), 0);
        let _ = std::fs::remove_file(&rotated);
    }

    #[test]
    fn a_closed_pipe_means_the_reader_is_gone() {
        let (reader, writer) = pipe(0);
        drop(reader);
        let err = LineOutput::file(writer)
            .write("a\nb\n")
            .expect_err("nobody reads");
        assert!(err.reader_gone());
        assert_eq!(err.lost, 2);
    }

    #[test]
    fn a_full_device_loses_every_line_of_the_batch() {
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut out = LineOutput::file(full);
        let err = out.write("a\nb\nc\n").expect_err("/dev/full is full");
        assert!(!err.reader_gone());
        assert_eq!(err.error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(err.lost, 3);
        assert!(!out.cut, "nothing was written, so nothing was cut");
    }

    /// The start of a line left by a failed write is cut off the file, in
    /// append mode and not (where the offset must move back too, or the
    /// next write would leave a hole of zeros).
    #[test]
    fn a_cut_line_is_taken_back_from_a_file() {
        for append in [true, false] {
            let path = temp_path(&format!("cut-{append}"));
            let _ = std::fs::remove_file(&path);
            let file = File::options()
                .create(true)
                .write(!append)
                .append(append)
                .open(&path)
                .expect("temp file");
            let mut out = LineOutput::file(file);
            out.write("one\n").expect("write");
            // What a write cut short by a full disk leaves.
            (&out.file).write_all(b"tw").expect("write");
            assert!(out.take_back(2));
            out.write("two\n").expect("write");
            let text = std::fs::read_to_string(&path).expect("read back");
            let _ = std::fs::remove_file(&path);
            assert_eq!(text, "one\ntwo\n", "append {append}");
        }
    }

    /// Bytes someone else appended after ours are not ours to cut.
    #[test]
    fn another_writers_bytes_are_not_taken_back() {
        let path = temp_path("other");
        let file = File::create(&path).expect("temp file");
        let mut out = LineOutput::file(file);
        out.write("one\n").expect("write");
        (&out.file).write_all(b"tw").expect("write");
        let mut other = File::options().append(true).open(&path).expect("open");
        other.write_all(b"theirs\n").expect("write");
        assert!(!out.take_back(2));
        let text = std::fs::read_to_string(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "one\ntwtheirs\n");
    }

    /// A pipe that fills up (non-blocking, so full is an error, `EAGAIN`):
    /// lines are lost and counted, the fragment of a line cut short cannot
    /// be taken back from a pipe and is ended by a newline, and writing
    /// resumes once the reader has drained the pipe.
    #[test]
    fn a_sink_counts_what_a_full_pipe_loses_and_resumes() {
        let (mut reader, writer) = pipe(libc::O_NONBLOCK);
        let mut sink = Sink::new("log", "a test pipe".into(), LineOutput::file(writer), false);
        let line = "x".repeat(999);
        let mut batch = String::new();
        for _ in 0..100 {
            push_line(&mut batch, &line);
        }
        sink.write(&batch);
        assert!(sink.failing && !sink.closed());
        let lost = sink.lost();
        assert!(lost > 0 && lost < 100, "{lost}");
        // The pipe holds a whole number of pages, not of 1000-byte lines.
        assert!(sink.out.cut);
        sink.write("more\n");
        assert_eq!(sink.lost(), lost + 1);

        let mut drained = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            drained.extend_from_slice(&chunk[..n]);
        }
        sink.write("z\n");
        assert!(!sink.failing);
        assert_eq!(sink.lost(), lost + 1);
        let n = reader.read(&mut chunk).expect("the line after the drain");
        drained.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8(drained).expect("UTF-8");
        let lines: Vec<&str> = text.split('\n').collect();
        let whole = lines.iter().filter(|l| **l == line).count() as u64;
        assert_eq!(whole + lost, 100);
        // Whole lines, then the fragment alone on its line, then z.
        assert_eq!(
            lines[lines.len() - 2],
            "z",
            "{:?}",
            &lines[lines.len() - 3..]
        );
        assert!(lines[lines.len() - 3].chars().all(|c| c == 'x'));
        assert!(lines[lines.len() - 3].len() < line.len());
    }

    /// Lines numbered 0.., `width` bytes each with the newline.
    /// A queued sink appending to the test log at `path`.
    fn queued_log(path: &std::path::Path) -> QueuedSink {
        let sink = Sink::new(
            "log",
            "the test log".to_string(),
            LineOutput::append_to(path).expect("opening the log"),
            false,
        );
        QueuedSink::start(sink).expect("writer thread")
    }

    fn numbered_lines(count: usize, width: usize) -> Vec<String> {
        (0..count)
            .map(|n| format!("{n:0>w$}\n", w = width - 1))
            .collect()
    }

    /// A reader that does not read costs lines, never a wait: every write
    /// returns while the pipe is full, what does not fit the queue is
    /// counted, and once the reader reads, every line is either read whole,
    /// in order, or counted lost.
    #[test]
    fn a_queued_sink_never_waits_for_its_reader() {
        let (mut reader, writer) = pipe(0);
        let sink = Sink::new(
            "stdout",
            "a test pipe".into(),
            LineOutput::file(writer),
            true,
        );
        let mut queued = QueuedSink::with_capacity(sink, 16 * 1024).expect("writer thread");
        // 400 KB: six times what the pipe holds, and far more than the queue.
        let lines = numbered_lines(4000, 100);
        let (done, written) = std::sync::mpsc::channel();
        let writing = std::thread::spawn(move || {
            for line in &lines {
                queued.write(line);
            }
            done.send(()).expect("the test waits");
            queued
        });
        // Generous: the writes take milliseconds; a sink that waits for the
        // reader never gets there, as nothing reads until after this.
        written
            .recv_timeout(Duration::from_secs(60))
            .expect("the writes returned while nobody read the pipe");
        let mut queued = writing.join().expect("the writing thread");
        assert!(queued.lost() > 0, "the queue cannot hold 400 KB");
        let draining = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).expect("reading the pipe");
            text
        });
        queued.finish(Duration::from_secs(60));
        let lost = queued.lost();
        drop(queued);
        let text = draining.join().expect("the draining thread");
        let read: Vec<u64> = text
            .lines()
            .map(|line| {
                assert_eq!(line.len(), 99, "a whole line: {line:?}");
                line.parse().expect("a number")
            })
            .collect();
        assert!(read.windows(2).all(|pair| pair[0] < pair[1]), "in order");
        assert_eq!(read.len() as u64 + lost, 4000);
    }

    /// A reader that never reads does not hold up the end: `finish` waits
    /// its patience, then counts what is still queued as lost.
    #[test]
    fn a_queued_sink_gives_up_at_the_end_on_a_reader_that_never_reads() {
        let (reader, writer) = pipe(0);
        let sink = Sink::new(
            "stdout",
            "a test pipe".into(),
            LineOutput::file(writer),
            true,
        );
        let mut queued = QueuedSink::with_capacity(sink, 1024 * 1024).expect("writer thread");
        for line in numbered_lines(2000, 100) {
            queued.write(&line);
        }
        assert_eq!(queued.lost(), 0, "200 KB fit the queue");
        queued.finish(Duration::from_millis(200));
        // The pipe holds at most 64 KiB: the rest was not written.
        assert!(queued.lost() >= 2000 - 656, "{}", queued.lost());
        drop(reader);
    }

    /// Dropped without `finish` (a run ending on an error, just before the
    /// process exits), a sink has written what it queued by the time the
    /// drop returns.
    #[test]
    fn a_dropped_queued_sink_has_written_what_it_queued() {
        let path = temp_path("dropped");
        let _ = std::fs::remove_file(&path);
        let mut queued = queued_log(&path);
        for line in numbered_lines(2000, 100) {
            queued.write(&line);
        }
        drop(queued);
        let text = std::fs::read_to_string(&path).expect("reading");
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.lines().count(), 2000);
    }

    /// A reopen (SIGHUP) comes after the lines queued before it: they stay
    /// in the renamed file, the later ones go to the new one.
    #[test]
    fn a_queued_reopen_keeps_the_order_of_lines() {
        let path = temp_path("queued-reopen");
        let rotated = temp_path("queued-reopen-rotated");
        let _ = std::fs::remove_file(&path);
        let mut queued = queued_log(&path);
        queued.write("one\n");
        assert!(queued.flush(Duration::from_secs(60)));
        std::fs::rename(&path, &rotated).expect("rotating the log");
        queued.write("two\n");
        queued.reopen(&path);
        queued.write("three\n");
        queued.finish(Duration::from_secs(60));
        let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("reading");
        assert_eq!(read(&rotated), "one\ntwo\n");
        assert_eq!(read(&path), "three\n");
        assert_eq!(queued.lost(), 0);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }

    #[test]
    fn short_counts_fit_six_characters() {
        assert_eq!(short_count(0.0), "0");
        assert_eq!(short_count(999.0), "999");
        assert_eq!(short_count(2.5), "2.5");
        assert_eq!(short_count(17.96), "18");
        assert_eq!(short_count(12_345.0), "12.3k");
        assert_eq!(short_count(4_560_000.0), "4.56M");
        assert_eq!(short_count(7.1e9), "7.10G");
    }

    #[test]
    fn totals_table_lists_every_counter() {
        let mut counters = Counters::default();
        counters.values[Counter::Syn as usize] = 42;
        let table = totals_table(&counters);
        assert_eq!(table.lines().count(), Counter::ALL.len());
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn", "42"])),
            "{table}"
        );
    }

    #[test]
    fn both_ways_table_has_a_column_each() {
        let (mut received, mut sent) = (Counters::default(), Counters::default());
        received.values[Counter::Syn as usize] = 42;
        sent.values[Counter::SynAck as usize] = 41;
        let table = totals_table_both(&received, &sent);
        assert_eq!(table.lines().count(), Counter::ALL.len() + 1);
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .split_whitespace()
                .eq(["in", "out"])
        );
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn", "42", "0"])),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn_ack", "0", "41"])),
            "{table}"
        );
    }
}
