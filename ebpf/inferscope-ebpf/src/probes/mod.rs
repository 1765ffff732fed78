//! One module per probe family.
pub mod proc;
pub mod sock;
