"""Prints, for the running CPython (3.11+), what inferscope's bytecode decoder needs about each
opcode number 0-255: how many inline cache code units follow it, and whether it is a RESUME or a
return (RETURN_VALUE, RETURN_CONST), counting specialized and instrumented forms. Output is the
Rust table of userspace/src/python/opcodes.rs for this version; tests/tests/python.rs runs it on
every interpreter present and compares.

    python3.X tests/python/opcode_tables.py
"""
import dis
import opcode
import sys

names = {}
for name, num in opcode.opmap.items():
    names[num] = name
for mod in (opcode, dis):
    for attr in ("_specialized_opmap",):
        for name, num in getattr(mod, attr, {}).items():
            names.setdefault(num, name)
all_opname = getattr(dis, "_all_opname", None)
if all_opname:
    for num, name in enumerate(all_opname):
        if not name.startswith("<"):
            names.setdefault(num, name)

base_of = {}
specs = getattr(opcode, "_specializations", None) or getattr(dis, "_specializations", {})
for base, family in specs.items():
    for s in family:
        base_of[s] = base


def base(name):
    if name.startswith("INSTRUMENTED_"):
        name = name[len("INSTRUMENTED_"):]
    return base_of.get(name, name)


caches = opcode._inline_cache_entries
if isinstance(caches, (list, tuple)):
    caches = {opcode.opname[i]: n for i, n in enumerate(caches) if n}

cache_row, resume, ret = [], [], []
for num in range(256):
    name = names.get(num)
    if name is None:
        cache_row.append(0)
        continue
    b = base(name)
    cache_row.append(caches.get(b, 0))
    if b == "RESUME":
        resume.append(num)
    if b in ("RETURN_VALUE", "RETURN_CONST"):
        ret.append(num)

v = "%d_%d" % sys.version_info[:2]
print("pub const CACHES_%s: [u8; 256] = %s;" % (v, "[" + ", ".join(map(str, cache_row)) + "]"))
print("pub const RESUME_%s: &[u8] = &%s;" % (v, resume))
print("pub const RETURN_%s: &[u8] = &%s;" % (v, ret))
