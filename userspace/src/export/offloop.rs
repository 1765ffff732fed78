//! Writes that never hold up the event loop. A sink formats its lines on the loop into a batch;
//! the batch goes to a thread of its own that does the `write(2)`s. A consumer that stops
//! reading (`--jsonl -` into a pipe nobody drains, a stalled disk) blocks only that thread:
//! batches wait in memory up to a bound, and past it whole batches are dropped and counted,
//! while capture and the other sinks go on.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// A batch is handed over once it holds this many bytes, without waiting for the next flush.
const BATCH_BYTES: usize = 256 * 1024;

/// Counters shared with the writing thread.
#[derive(Default)]
struct Counters {
    /// Bytes handed over and not yet written.
    pending: AtomicU64,
    /// Failed writes.
    errors: AtomicU64,
}

/// Lines out through a writing thread, with at most `max_pending` bytes waiting.
pub struct OffLoopWriter {
    batch: Vec<u8>,
    /// Lines in `batch`.
    batch_lines: u64,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    max_pending: u64,
    /// Lines dropped because too much was waiting.
    pub dropped_lines: u64,
    /// What is being written, for messages.
    what: &'static str,
    /// When a drop was last said on stderr.
    said: Option<Instant>,
}

impl OffLoopWriter {
    /// `out` is written by a new thread named `name`.
    pub fn new(out: Box<dyn Write + Send>, name: &str, what: &'static str, max_pending: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let mut out = out;
            for batch in rx {
                if out.write_all(&batch).and_then(|_| out.flush()).is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                c.pending.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            }
        })?;
        Ok(Self {
            batch: Vec::with_capacity(BATCH_BYTES),
            batch_lines: 0,
            tx: Some(tx),
            thread: Some(thread),
            counters,
            max_pending,
            dropped_lines: 0,
            what,
            said: None,
        })
    }

    /// The batch being filled (append one line, then call [`Self::line_done`]).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.batch
    }

    /// One line was appended (with its newline).
    pub fn line_done(&mut self) {
        self.batch_lines += 1;
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands the batch to the writing thread, or drops it when too much waits already.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let len = self.batch.len() as u64;
        let pending = self.counters.pending.load(Ordering::Relaxed);
        if pending + len > self.max_pending {
            self.dropped_lines += self.batch_lines;
            if self.said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                self.said = Some(Instant::now());
                eprintln!(
                    "inferscope: {} is not being read fast enough ({} KiB waiting): {} lines dropped so far; capture goes on",
                    self.what,
                    pending / 1024,
                    self.dropped_lines
                );
            }
            self.batch.clear();
            self.batch_lines = 0;
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES));
        self.batch_lines = 0;
        self.counters.pending.fetch_add(len, Ordering::Relaxed);
        if let Some(tx) = &self.tx
            && tx.send(batch).is_err()
        {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed writes so far.
    pub fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// At the stop: the last batch out, and up to `wait` for the thread to write what waits.
    /// A consumer that still does not read loses it (counted, and said).
    pub fn close(&mut self, wait: Duration) {
        self.flush();
        self.tx = None;
        let Some(t) = self.thread.take() else { return };
        let start = Instant::now();
        while !t.is_finished() && start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            eprintln!(
                "inferscope: {} is not being read: {} KiB left unwritten at the stop",
                self.what,
                self.counters.pending.load(Ordering::Relaxed) / 1024
            );
        }
    }
}

impl Drop for OffLoopWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.close(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until told to go on, then records what it got.
    struct Gate {
        go: Arc<std::sync::Mutex<bool>>,
        got: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !*self.go.lock().unwrap() {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &mut OffLoopWriter, i: usize) {
        let b = w.buffer();
        b.extend_from_slice(format!("{i:099}\n").as_bytes());
        w.line_done();
        w.flush();
    }

    /// A consumer that stops reading costs the writer nothing but the lines past the bound:
    /// those are dropped whole and counted, the others come out in order once it reads again.
    #[test]
    fn a_stalled_consumer_drops_whole_lines_and_never_blocks() {
        let go = Arc::new(std::sync::Mutex::new(false));
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Gate { go: go.clone(), got: got.clone() };
        let mut w = OffLoopWriter::new(Box::new(gate), "test-writer", "the test output", 350).unwrap();
        let start = Instant::now();
        for i in 0..10 {
            line(&mut w, i);
        }
        assert!(start.elapsed() < Duration::from_secs(1), "the writer waited for its consumer");
        assert_eq!(w.dropped_lines, 7);
        *go.lock().unwrap() = true;
        let t = Instant::now();
        while w.counters.pending.load(Ordering::Relaxed) > 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        line(&mut w, 10);
        w.close(Duration::from_secs(5));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(lines, vec![0, 1, 2, 10]);
        assert_eq!(w.errors(), 0);
    }
}
