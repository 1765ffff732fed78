//! One module per probe family.
pub mod device;
pub mod doctor;
pub mod proc;
pub mod python;
pub mod sock;
pub mod tls;
