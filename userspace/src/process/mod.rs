//! Process knowledge, in one place: what inferscope knows about a target process and reads
//! from the system to know it. Every other module asks here.
//!
//! - [`procfs`]: /proc: processes, their tree, command lines, sockets (TCP tables, unix
//!   sockets), discovery of vLLM/SGLang servers, the packages a process imports.
//! - [`maps`]: what a process has mapped, and the host path of a mapped file.
//! - [`elf`]: function symbols of ELF files, readable names.
//! - [`identity`]: the container and Kubernetes pod a process runs in.
//! - [`kubernetes`]: what the Kubernetes API adds: owning workload, container name, pod labels.
//! - [`runtime`]: what the container runtime (containerd, Docker) says: the kubelet's labels.
//! - [`memory`]: another process's memory.
//! - [`version`]: release numbers, one parser.

pub mod elf;
pub mod identity;
pub mod kubernetes;
pub mod maps;
pub mod memory;
pub mod procfs;
pub mod runtime;
pub mod version;
