//! Every runtime function inferscope can probe: which library family exports it, what the call
//! is (launch, graph launch, copy, wait, allocation, collective, naming), the probe group that
//! switches it, and where its values are at entry.
//!
//! Positions are *integer argument slots* after the C ABI splits small structs: a by-value
//! `dim3` takes two slots (x and y packed in the first, z in the second) on both x86-64 and
//! aarch64, so `cudaLaunchKernel(func, grid, block, args, shmem, stream)` has its stream in
//! slot 7. x86-64 passes slots 0-5 in registers and the rest on the stack; aarch64 slots 0-7.
//! [`Arg::spec`] turns a slot into what the BPF side reads.

use inferscope_common::{ARG_DEREF, ARG_NONE, ARG_REG, ARG_STACK, ArgSpec};

/// Which runtime a symbol belongs to (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    CudaDriver,
    CudaRuntime,
    Nccl,
    Acl,
    /// CANN's low-level runtime (`rt*`).
    AscendRt,
    /// `aclnn*` operator entry points of libopapi and `aclopExecuteV2`.
    AclOp,
    Hccl,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::CudaDriver => "cuda_driver",
            Api::CudaRuntime => "cuda_runtime",
            Api::Nccl => "nccl",
            Api::Acl => "acl",
            Api::AscendRt => "ascend_rt",
            Api::AclOp => "aclnn",
            Api::Hccl => "hccl",
        }
    }
}

/// Direction of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CopyDir {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
    HostToHost,
    /// Unified addressing: the runtime decides (`cuMemcpyAsync`, `cudaMemcpyDefault`).
    Default,
}

impl CopyDir {
    pub const ALL: [CopyDir; 5] =
        [CopyDir::HostToDevice, CopyDir::DeviceToHost, CopyDir::DeviceToDevice, CopyDir::HostToHost, CopyDir::Default];

    pub fn name(self) -> &'static str {
        match self {
            CopyDir::HostToDevice => "h2d",
            CopyDir::DeviceToHost => "d2h",
            CopyDir::DeviceToDevice => "d2d",
            CopyDir::HostToHost => "h2h",
            CopyDir::Default => "default",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// `cudaMemcpyKind`: 0 h2h, 1 h2d, 2 d2h, 3 d2d, 4 default.
    fn from_cuda_kind(k: u64) -> Self {
        match k {
            0 => CopyDir::HostToHost,
            1 => CopyDir::HostToDevice,
            2 => CopyDir::DeviceToHost,
            3 => CopyDir::DeviceToDevice,
            _ => CopyDir::Default,
        }
    }

    /// `aclrtMemcpyKind`: 0 h2h, 1 h2d, 2 d2h, 3 d2d.
    fn from_acl_kind(k: u64) -> Self {
        Self::from_cuda_kind(k)
    }
}

/// What the host waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncKind {
    Stream,
    Device,
    Event,
}

impl SyncKind {
    pub fn name(self) -> &'static str {
        match self {
            SyncKind::Stream => "stream",
            SyncKind::Device => "device",
            SyncKind::Event => "event",
        }
    }
}

/// Collective operations (NCCL and HCCL alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collective {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
    Reduce,
    Send,
    Recv,
}

impl Collective {
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all_reduce",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::Send => "send",
            Collective::Recv => "recv",
        }
    }
}

/// What a call does. Decides what its four values mean:
/// - `Launch`: function handle, stream, grid x (blocks), block x
/// - `Graph`: graph (or model) handle, stream
/// - `Copy`: destination, stream, bytes, runtime's copy kind
/// - `Sync`: stream or event handle
/// - `Alloc`: -, -, bytes
/// - `Collective`: communicator, stream, element count, data type
/// - `Name`: the handle named (the name is in a separate record)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Launch,
    Graph,
    Copy(CopySource),
    Sync(SyncKind),
    Alloc,
    Collective(Collective, DtypeTable),
    Name,
}

/// Where a copy's direction comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopySource {
    Fixed(CopyDir),
    /// The 4th value is a `cudaMemcpyKind`.
    CudaKind,
    /// The 4th value is an `aclrtMemcpyKind`.
    AclKind,
}

impl CopySource {
    pub fn dir(self, kind: u64) -> CopyDir {
        match self {
            CopySource::Fixed(d) => d,
            CopySource::CudaKind => CopyDir::from_cuda_kind(kind),
            CopySource::AclKind => CopyDir::from_acl_kind(kind),
        }
    }
}

/// How a collective's data type number becomes bytes per element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtypeTable {
    Nccl,
    Hccl,
}

impl DtypeTable {
    /// Bytes per element, None for a type number this table does not know.
    pub fn size(self, dtype: u64) -> Option<u64> {
        let sizes: &[u64] = match self {
            // ncclInt8, Uint8, Int32, Uint32, Int64, Uint64, Float16, Float32, Float64,
            // Bfloat16, Float8e4m3, Float8e5m2
            DtypeTable::Nccl => &[1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1],
            // HCCL_DATA_TYPE_INT8, INT16, INT32, FP16, FP32, INT64, UINT64, UINT8, UINT16,
            // UINT32, FP64, BFP16, INT128
            DtypeTable::Hccl => &[1, 2, 4, 2, 4, 8, 8, 1, 2, 4, 8, 2, 16],
        };
        sizes.get(usize::try_from(dtype).ok()?).copied()
    }
}

/// The switch a probe belongs to (`--device-probes`, `--no-device-probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Launch,
    Graph,
    Copy,
    Sync,
    Alloc,
    Collective,
    Names,
    Ops,
}

impl Group {
    pub const ALL: [Group; 8] = [
        Group::Launch,
        Group::Graph,
        Group::Copy,
        Group::Sync,
        Group::Alloc,
        Group::Collective,
        Group::Names,
        Group::Ops,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::Launch => "launch",
            Group::Graph => "graph",
            Group::Copy => "copy",
            Group::Sync => "sync",
            Group::Alloc => "alloc",
            Group::Collective => "collective",
            Group::Names => "names",
            Group::Ops => "ops",
        }
    }

    pub fn parse(s: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == s)
    }

    /// On unless switched off. Kernel launches and eager operators are not: an engine running
    /// eagerly launches 10^4-10^5 kernels a second, and each probed call costs microseconds
    /// (measured at start-up, see `device::calibrate`).
    pub fn default_on(self) -> bool {
        !matches!(self, Group::Launch | Group::Ops)
    }
}

/// Where one value is, in integer argument slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    None,
    /// A whole slot.
    Slot(u8),
    /// The low 32 bits of a slot (a `u32`, or the x of a packed `dim3`).
    Slot32(u8),
    /// A field of the struct a slot points to: slot, byte offset, width (4 or 8).
    Field(u8, u32, u8),
}

/// Integer argument slots passed in registers.
#[cfg(target_arch = "aarch64")]
pub const REGISTER_SLOTS: u8 = 8;
#[cfg(not(target_arch = "aarch64"))]
pub const REGISTER_SLOTS: u8 = 6;

impl Arg {
    pub fn spec(self) -> ArgSpec {
        let (src, index, width, offset) = match self {
            Arg::None => (ARG_NONE, 0, 8, 0),
            Arg::Slot(n) | Arg::Slot32(n) => {
                let width = if matches!(self, Arg::Slot32(_)) { 4 } else { 8 };
                if n < REGISTER_SLOTS { (ARG_REG, n, width, 0) } else { (ARG_STACK, n - REGISTER_SLOTS, width, 0) }
            }
            Arg::Field(n, off, w) => (ARG_DEREF, n, w, off),
        };
        ArgSpec { src, index, width, _pad: 0, offset }
    }
}

/// One probe-able function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub symbol: &'static str,
    pub api: Api,
    pub class: Class,
    pub group: Group,
    pub args: [Arg; 4],
    /// A NUL-terminated name to read (`Class::Name`, `aclopExecuteV2`).
    pub name: Arg,
    /// Probe the return too: durations (launch cost, wait time) and return values.
    pub ret: bool,
    /// At return, `args[0]` points to the handle the call wrote.
    pub out_handle: bool,
}

use Arg::{Field, None as N, Slot as S, Slot32 as S32};

const fn e(symbol: &'static str, api: Api, class: Class, args: [Arg; 4]) -> Entry {
    let group = match class {
        Class::Launch => Group::Launch,
        Class::Graph => Group::Graph,
        Class::Copy(_) => Group::Copy,
        Class::Sync(_) => Group::Sync,
        Class::Alloc => Group::Alloc,
        Class::Collective(..) => Group::Collective,
        Class::Name => Group::Names,
    };
    Entry { symbol, api, class, group, args, name: Arg::None, ret: true, out_handle: false }
}

/// A lookup that writes the handle through `out` and takes the name at `name`.
const fn lookup(symbol: &'static str, api: Api, out: u8, name: u8) -> Entry {
    let mut x = e(symbol, api, Class::Name, [S(out), N, N, N]);
    x.name = S(name);
    x.out_handle = true;
    x
}

/// A registration that passes the handle and its name in: entry only.
const fn register(symbol: &'static str, api: Api, handle: u8, name: u8) -> Entry {
    let mut x = e(symbol, api, Class::Name, [S(handle), N, N, N]);
    x.name = S(name);
    x.ret = false;
    x
}

use Api::*;
use Class::{Alloc, Graph, Launch};
use CopyDir::*;

const fn copy(d: CopyDir) -> Class {
    Class::Copy(CopySource::Fixed(d))
}
const fn nccl(c: Collective) -> Class {
    Class::Collective(c, DtypeTable::Nccl)
}
const fn hccl(c: Collective) -> Class {
    Class::Collective(c, DtypeTable::Hccl)
}

// cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra)
const CU_LAUNCH: [Arg; 4] = [S(0), S(8), S32(1), S32(4)];
// cuLaunchKernelEx(const CUlaunchConfig* c, f, params, extra): gridDimX at 0, blockDimX at 12,
// hStream at 32. cudaLaunchKernelExC(const cudaLaunchConfig_t* c, func, args): the same layout.
const EX_LAUNCH: [Arg; 4] = [S(1), Field(0, 32, 8), Field(0, 0, 4), Field(0, 12, 4)];
// cudaLaunchKernel(func, dim3 grid [2 slots], dim3 block [2 slots], args, shmem, stream)
const RT_LAUNCH: [Arg; 4] = [S(0), S(7), S32(1), S32(3)];
// cuMemcpy{HtoD,DtoH,DtoD}Async_v2(dst, src, bytes, stream), cuMemcpyAsync(dst, src, bytes, stream)
const CU_COPY: [Arg; 4] = [S(0), S(3), S(2), N];
const SYNC1: [Arg; 4] = [S(0), S(0), N, N];
const NONE: [Arg; 4] = [N, N, N, N];

/// The catalogue. `aclnn*` operators are matched by prefix (see [`lookup_symbol`]).
pub static ENTRIES: &[Entry] = &[
    // CUDA driver: where every launch path meets (runtime, cuBLAS, Triton).
    e("cuLaunchKernel", CudaDriver, Launch, CU_LAUNCH),
    e("cuLaunchKernel_ptsz", CudaDriver, Launch, CU_LAUNCH),
    e("cuLaunchKernelEx", CudaDriver, Launch, EX_LAUNCH),
    e("cuLaunchKernelEx_ptsz", CudaDriver, Launch, EX_LAUNCH),
    e("cuGraphLaunch", CudaDriver, Graph, [S(0), S(1), N, N]),
    e("cuGraphLaunch_ptsz", CudaDriver, Graph, [S(0), S(1), N, N]),
    e("cuMemcpyHtoDAsync_v2", CudaDriver, copy(HostToDevice), CU_COPY),
    e("cuMemcpyHtoDAsync_v2_ptsz", CudaDriver, copy(HostToDevice), CU_COPY),
    e("cuMemcpyDtoHAsync_v2", CudaDriver, copy(DeviceToHost), CU_COPY),
    e("cuMemcpyDtoHAsync_v2_ptsz", CudaDriver, copy(DeviceToHost), CU_COPY),
    e("cuMemcpyDtoDAsync_v2", CudaDriver, copy(DeviceToDevice), CU_COPY),
    e("cuMemcpyDtoDAsync_v2_ptsz", CudaDriver, copy(DeviceToDevice), CU_COPY),
    e("cuMemcpyAsync", CudaDriver, copy(Default), CU_COPY),
    e("cuMemcpyAsync_ptsz", CudaDriver, copy(Default), CU_COPY),
    e("cuStreamSynchronize", CudaDriver, Class::Sync(SyncKind::Stream), SYNC1),
    e("cuStreamSynchronize_ptsz", CudaDriver, Class::Sync(SyncKind::Stream), SYNC1),
    e("cuCtxSynchronize", CudaDriver, Class::Sync(SyncKind::Device), NONE),
    e("cuEventSynchronize", CudaDriver, Class::Sync(SyncKind::Event), SYNC1),
    e("cuMemAlloc_v2", CudaDriver, Alloc, [N, N, S(1), N]),
    lookup("cuModuleGetFunction", CudaDriver, 0, 2),
    lookup("cuLibraryGetKernel", CudaDriver, 0, 2),
    // CUDA runtime: adds the host stub, which names the kernel.
    e("cudaLaunchKernel", CudaRuntime, Launch, RT_LAUNCH),
    e("cudaLaunchKernel_ptsz", CudaRuntime, Launch, RT_LAUNCH),
    e("cudaLaunchKernelExC", CudaRuntime, Launch, EX_LAUNCH),
    e("cudaLaunchKernelExC_ptsz", CudaRuntime, Launch, EX_LAUNCH),
    e("cudaGraphLaunch", CudaRuntime, Graph, [S(0), S(1), N, N]),
    e("cudaGraphLaunch_ptsz", CudaRuntime, Graph, [S(0), S(1), N, N]),
    // cudaMemcpyAsync(dst, src, count, kind, stream)
    e("cudaMemcpyAsync", CudaRuntime, Class::Copy(CopySource::CudaKind), [S(0), S(4), S(2), S32(3)]),
    e("cudaMemcpyAsync_ptsz", CudaRuntime, Class::Copy(CopySource::CudaKind), [S(0), S(4), S(2), S32(3)]),
    e("cudaStreamSynchronize", CudaRuntime, Class::Sync(SyncKind::Stream), SYNC1),
    e("cudaStreamSynchronize_ptsz", CudaRuntime, Class::Sync(SyncKind::Stream), SYNC1),
    e("cudaDeviceSynchronize", CudaRuntime, Class::Sync(SyncKind::Device), NONE),
    e("cudaEventSynchronize", CudaRuntime, Class::Sync(SyncKind::Event), SYNC1),
    e("cudaMalloc", CudaRuntime, Alloc, [N, N, S(1), N]),
    // __cudaRegisterFunction(fatCubinHandle, hostFun, deviceFun, deviceName, ...)
    register("__cudaRegisterFunction", CudaRuntime, 1, 2),
    // NCCL: (send, recv, count, dtype, [op,] comm, stream); the 7th slot is on the stack.
    e("ncclAllReduce", Nccl, nccl(Collective::AllReduce), [S(5), S(6), S(2), S32(3)]),
    e("ncclAllGather", Nccl, nccl(Collective::AllGather), [S(4), S(5), S(2), S32(3)]),
    e("ncclReduceScatter", Nccl, nccl(Collective::ReduceScatter), [S(5), S(6), S(2), S32(3)]),
    e("ncclBroadcast", Nccl, nccl(Collective::Broadcast), [S(5), S(6), S(2), S32(3)]),
    e("ncclReduce", Nccl, nccl(Collective::Reduce), [S(6), S(7), S(2), S32(3)]),
    e("ncclSend", Nccl, nccl(Collective::Send), [S(4), S(5), S(1), S32(2)]),
    e("ncclRecv", Nccl, nccl(Collective::Recv), [S(4), S(5), S(1), S32(2)]),
    // Ascend ACL runtime.
    e("aclrtLaunchKernel", Acl, Launch, [S(0), S(4), S32(1), N]),
    e("aclrtLaunchKernelWithConfig", Acl, Launch, [S(0), S(2), S32(1), N]),
    e("aclrtLaunchKernelV2", Acl, Launch, [S(0), S(5), S32(1), N]),
    e("aclrtSynchronizeStream", Acl, Class::Sync(SyncKind::Stream), SYNC1),
    e("aclrtSynchronizeStreamWithTimeout", Acl, Class::Sync(SyncKind::Stream), SYNC1),
    e("aclrtSynchronizeDevice", Acl, Class::Sync(SyncKind::Device), NONE),
    e("aclrtSynchronizeEvent", Acl, Class::Sync(SyncKind::Event), SYNC1),
    // aclrtMemcpyAsync(dst, destMax, src, count, kind, stream)
    e("aclrtMemcpyAsync", Acl, Class::Copy(CopySource::AclKind), [S(0), S(5), S(3), S32(4)]),
    e("aclrtMalloc", Acl, Alloc, [N, N, S(1), N]),
    e("aclmdlExecute", Acl, Graph, [S32(0), N, N, N]),
    e("aclmdlExecuteAsync", Acl, Graph, [S32(0), S(3), N, N]),
    lookup("aclrtBinaryGetFunction", Acl, 2, 1),
    // aclopExecuteV2(opType, nIn, inDesc, in, nOut, outDesc, out, attr, stream): named per call.
    Entry {
        symbol: "aclopExecuteV2",
        api: AclOp,
        class: Launch,
        group: Group::Ops,
        args: [S(0), S(8), N, N],
        name: S(0),
        ret: true,
        out_handle: false,
    },
    // CANN's runtime under ACL.
    e("rtKernelLaunch", AscendRt, Launch, [S(0), S(5), S32(1), N]),
    e("rtKernelLaunchWithHandle", AscendRt, Launch, [S(0), S(5), S32(2), N]),
    register("rtFunctionRegister", AscendRt, 1, 2),
    // HCCL: like NCCL, with u64 counts.
    e("HcclAllReduce", Hccl, hccl(Collective::AllReduce), [S(5), S(6), S(2), S32(3)]),
    e("HcclAllGather", Hccl, hccl(Collective::AllGather), [S(4), S(5), S(2), S32(3)]),
    e("HcclReduceScatter", Hccl, hccl(Collective::ReduceScatter), [S(5), S(6), S(2), S32(3)]),
    e("HcclBroadcast", Hccl, hccl(Collective::Broadcast), [S(4), S(5), S(1), S32(2)]),
    e("HcclSend", Hccl, hccl(Collective::Send), [S(4), S(5), S(1), S32(2)]),
    e("HcclRecv", Hccl, hccl(Collective::Recv), [S(4), S(5), S(1), S32(2)]),
];

/// `aclnnXxx(void* workspace, uint64_t workspaceSize, aclOpExecutor*, aclrtStream)`: the
/// second phase of torch_npu's two-phase operators; the op is the symbol.
pub static ACLNN_OP: Entry = Entry {
    symbol: "aclnn*",
    api: AclOp,
    class: Launch,
    group: Group::Ops,
    args: [N, S(3), S(1), N],
    name: Arg::None,
    ret: true,
    out_handle: false,
};

/// The catalogue entry for an exported symbol, if inferscope probes it.
pub fn lookup_symbol(symbol: &str) -> Option<&'static Entry> {
    if let Some(e) = ENTRIES.iter().find(|e| e.symbol == symbol) {
        return Some(e);
    }
    if is_aclnn_op(symbol) { Some(&ACLNN_OP) } else { None }
}

/// `aclnnAdd`, not `aclnnAddGetWorkspaceSize` (the first phase only sizes the workspace).
pub fn is_aclnn_op(symbol: &str) -> bool {
    symbol.len() > 5
        && symbol.starts_with("aclnn")
        && symbol.as_bytes()[5].is_ascii_uppercase()
        && !symbol.ends_with("GetWorkspaceSize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_unique_and_found() {
        for (i, a) in ENTRIES.iter().enumerate() {
            assert!(ENTRIES[i + 1..].iter().all(|b| b.symbol != a.symbol), "{} twice", a.symbol);
            assert_eq!(lookup_symbol(a.symbol).map(|e| e.symbol), Some(a.symbol));
        }
        assert_eq!(lookup_symbol("aclnnMatmul").map(|e| e.api), Some(Api::AclOp));
        assert!(lookup_symbol("aclnnMatmulGetWorkspaceSize").is_none());
        assert!(lookup_symbol("aclnn").is_none());
        assert!(lookup_symbol("cuMemcpy").is_none());
    }

    #[test]
    fn stack_slots_follow_the_abi() {
        // cudaLaunchKernel's stream is the 8th integer slot: on x86-64 the second stack slot.
        let s = RT_LAUNCH[1].spec();
        if REGISTER_SLOTS == 6 {
            assert_eq!((s.src, s.index), (ARG_STACK, 1));
        } else {
            assert_eq!((s.src, s.index), (ARG_REG, 7));
        }
        let g = RT_LAUNCH[2].spec();
        assert_eq!((g.src, g.index, g.width), (ARG_REG, 1, 4));
        let f = EX_LAUNCH[1].spec();
        assert_eq!((f.src, f.index, f.offset, f.width), (ARG_DEREF, 0, 32, 8));
    }

    #[test]
    fn dtype_sizes() {
        assert_eq!(DtypeTable::Nccl.size(7), Some(4)); // ncclFloat32
        assert_eq!(DtypeTable::Nccl.size(9), Some(2)); // ncclBfloat16
        assert_eq!(DtypeTable::Hccl.size(3), Some(2)); // FP16
        assert_eq!(DtypeTable::Hccl.size(99), None);
        assert_eq!(DtypeTable::Nccl.size(u64::MAX), None);
    }
}
