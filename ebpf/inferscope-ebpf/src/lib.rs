#![no_std]
// This file exists so the crate has a library target that the host can build as a
// build-dependency of `userspace` (for cache invalidation); the programs are in main.rs.
