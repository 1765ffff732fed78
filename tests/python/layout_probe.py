"""Finds, in this interpreter's own memory, the offsets an out-of-process reader needs, by
looking for values it knows (its interpreter and thread state pointers, its native thread id,
its current frame), and prints them as JSON. Reads through /proc/self/mem: a wrong guess reads
nothing instead of crashing. Groundwork for the Python layer (issue 5): the offsets an
out-of-process reader uses, observed on real interpreters, to check tables and _Py_DebugOffsets
against.

    for v in ~/.pyenv/versions/3.*; do $v/bin/python tests/python/layout_probe.py; done
"""
import ctypes, json, os, struct, sys, threading

api = ctypes.pythonapi
MEM = os.open("/proc/self/mem", os.O_RDONLY)

def mem(addr, n):
    try:
        return os.pread(MEM, n, addr)
    except OSError:
        return b""

def words(b):
    return [struct.unpack_from("<Q", b, i)[0] for i in range(0, len(b) - 7, 8)]

def find(base, want, limit):
    for i, w in enumerate(words(mem(base, limit))):
        if w == want:
            return 8 * i
    return None

out = {"version": sys.version.split()[0], "executable": sys.executable}
runtime = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
api.PyInterpreterState_Get.restype = ctypes.c_void_p
api.PyThreadState_Get.restype = ctypes.c_void_p
interp = api.PyInterpreterState_Get()
tstate = api.PyThreadState_Get()
out["runtime_interpreters_head"] = find(runtime, interp, 1 << 17)
out["interp_threads_head"] = find(interp, tstate, 1 << 14)
out["tstate_thread_id"] = find(tstate, threading.get_ident(), 512)
if sys.version_info >= (3, 11):
    out["tstate_native_thread_id"] = find(tstate, threading.get_native_id(), 512)
out["tstate_interp"] = find(tstate, interp, 512)
out["debug_offsets_cookie"] = mem(runtime, 8) == b"xdebugpy"
# Where the interpreter lives: a shared libpython or the executable itself (Debian's builds).
for line in open("/proc/self/maps"):
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    if lo <= runtime < hi:
        f = line.split()
        # Past the file's end (.bss): an anonymous mapping right after the library's.
        out["runtime_in"] = f[5].rsplit("/", 1)[-1] if len(f) > 5 else "anonymous (.bss)"
        break


def frame_info():
    # Only C calls until the values are taken: a Python-level call would be the current frame.
    snap = bytes((ctypes.c_char * 512).from_address(tstate))
    cf = ctypes.c_uint64.from_address(tstate + 56).value
    cf0 = ctypes.c_uint64.from_address(cf).value if sys.version_info[:2] in ((3, 11), (3, 12)) else 0
    cf8 = ctypes.c_uint64.from_address(cf + 8).value if sys.version_info[:2] in ((3, 11), (3, 12)) else 0
    f = sys._getframe()
    w = words(snap)
    if sys.version_info >= (3, 11):
        iframe = words(mem(id(f) + 24, 8))[0]  # PyFrameObject.f_frame
        direct = next((8 * i for i, x in enumerate(w) if x == iframe), None)
        via = (56, 0) if cf0 == iframe else (56, 8) if cf8 == iframe else None
        code = find(iframe, id(f.f_code), 64)
        caller = words(mem(id(f.f_back) + 24, 8))[0]
        return {"tstate_current_frame": direct, "tstate_cframe_current_frame": via, "frame_code": code,
                "frame_previous": find(iframe, caller, 128)}
    direct = next((8 * i for i, x in enumerate(w) if x == id(f)), None)
    return {"tstate_frame": direct, "frame_code": find(id(f), id(f.f_code), 128), "frame_back": find(id(f), id(f.f_back), 64)}


def caller():
    return frame_info()


out.update(caller())
print(json.dumps(out))
