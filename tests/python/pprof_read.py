"""Reads a pprof profile (perftools.profiles.Profile) with Google's protobuf runtime, from a
descriptor built here from pprof's profile.proto field numbers (no protoc needed), and prints
it as JSON: sample types, period, and each sample's stack (function names, outermost first)
with its values. tests/tests/python.rs uses it to check `inferscope profile -o x.pb` with a
decoder inferscope did not write.

    python pprof_read.py FILE
"""
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
fd = descriptor_pb2.FileDescriptorProto(name="profile.proto", package="perftools.profiles", syntax="proto3")


def message(name, fields):
    m = fd.message_type.add(name=name)
    for fname, num, ftype, label, tname in fields:
        f = m.field.add(name=fname, number=num, type=ftype, label=label)
        if tname:
            f.type_name = ".perftools.profiles." + tname


R, O = F.LABEL_REPEATED, F.LABEL_OPTIONAL
message("ValueType", [("type", 1, F.TYPE_INT64, O, None), ("unit", 2, F.TYPE_INT64, O, None)])
message("Sample", [("location_id", 1, F.TYPE_UINT64, R, None), ("value", 2, F.TYPE_INT64, R, None)])
message("Line", [("function_id", 1, F.TYPE_UINT64, O, None), ("line", 2, F.TYPE_INT64, O, None)])
message("Location", [("id", 1, F.TYPE_UINT64, O, None), ("mapping_id", 2, F.TYPE_UINT64, O, None),
                     ("address", 3, F.TYPE_UINT64, O, None), ("line", 4, F.TYPE_MESSAGE, R, "Line")])
message("Function", [("id", 1, F.TYPE_UINT64, O, None), ("name", 2, F.TYPE_INT64, O, None),
                     ("system_name", 3, F.TYPE_INT64, O, None), ("filename", 4, F.TYPE_INT64, O, None),
                     ("start_line", 5, F.TYPE_INT64, O, None)])
message("Profile", [("sample_type", 1, F.TYPE_MESSAGE, R, "ValueType"), ("sample", 2, F.TYPE_MESSAGE, R, "Sample"),
                    ("location", 4, F.TYPE_MESSAGE, R, "Location"), ("function", 5, F.TYPE_MESSAGE, R, "Function"),
                    ("string_table", 6, F.TYPE_STRING, R, None), ("time_nanos", 9, F.TYPE_INT64, O, None),
                    ("duration_nanos", 10, F.TYPE_INT64, O, None), ("period_type", 11, F.TYPE_MESSAGE, O, "ValueType"),
                    ("period", 12, F.TYPE_INT64, O, None)])
pool = descriptor_pool.DescriptorPool()
pool.Add(fd)
Profile = message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))

p = Profile()
p.ParseFromString(open(sys.argv[1], "rb").read())
s = list(p.string_table)
funcs = {f.id: (s[f.name], s[f.filename], f.start_line) for f in p.function}
locs = {loc.id: funcs[loc.line[0].function_id] for loc in p.location}
print(json.dumps({
    "sample_types": [[s[t.type], s[t.unit]] for t in p.sample_type],
    "period": p.period,
    "period_type": [s[p.period_type.type], s[p.period_type.unit]],
    "duration_nanos": p.duration_nanos,
    "samples": [{"stack": [locs[i][0] for i in reversed(x.location_id)], "values": list(x.value)} for x in p.sample],
}))
