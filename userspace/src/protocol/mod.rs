//! Protocol parsers. Each takes bytes (with timestamps and gaps) and returns values; none
//! touches the kernel, so all are unit-tested, property-tested and fuzzed without root.
pub mod http;
pub mod msgpack;
pub mod openai;
pub mod pickle;
pub mod sse;
pub mod zmtp;

/// A piece of one direction of a connection's byte stream, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Captured bytes. `syscall_start` is true when they begin a syscall's data (parsers
    /// resynchronise only there). `arrival_ns`, when not 0, is when the first of these bytes
    /// arrived at the host (reads only), which a busy server's read can lag.
    Data { ts_ns: u64, bytes: &'a [u8], syscall_start: bool, arrival_ns: u64 },
    /// `len` bytes of the stream were not captured.
    Gap { len: u64 },
    /// The peer closed its side (a read returned 0) or the connection was closed.
    Eof { ts_ns: u64 },
}
