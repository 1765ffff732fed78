//! Another process's memory, read with `process_vm_readv` (CAP_SYS_PTRACE; no stop, no
//! ptrace attach): what the Python layer walks to find interpreters, threads and frames.

use anyhow::{Result, bail};

/// Reads another process's memory.
pub struct Memory {
    pid: u32,
}

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: both iovecs describe valid buffers of `buf.len()` bytes (the remote one is
        // checked by the kernel).
        let n = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            bail!("reading pid {} at {addr:#x}: {}", self.pid, std::io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            bail!("short read of pid {} at {addr:#x}", self.pid);
        }
        Ok(())
    }

    pub fn u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}
