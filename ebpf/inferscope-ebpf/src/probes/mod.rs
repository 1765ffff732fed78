//! One module per probe family.
pub mod doctor;
pub mod proc;
pub mod sock;
