#!/usr/bin/env python3
"""Print the msgpack wire layout of the SGLang IPC messages inferscope decodes, for the SGLang
installed in the interpreter that runs this (its venv's python).

With SGLANG_USE_PICKLE_IPC=0, SGLang sends its io_struct messages as msgspec Structs with
array_like=True and tag=True: [class name, field 1, field 2, ...] in the order the class
declares them (inherited fields first); SamplingParams goes untagged. Which fields, in which
order, changes between releases, so the order is data: this script's output, merged into
userspace/src/engine/sglang_layouts.json under the release:

  .venv-sglang/bin/python tests/sglang/layouts.py --merge userspace/src/engine/sglang_layouts.json
"""

import argparse
import importlib.metadata
import json
import warnings

warnings.filterwarnings("ignore")

import msgspec  # noqa: E402
from sglang.srt.managers import io_struct  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

CLASSES = [
    "TokenizedGenerateReqInput",
    "TokenizedEmbeddingReqInput",
    "BatchTokenizedGenerateReqInput",
    "BatchTokenizedEmbeddingReqInput",
    "AbortReq",
    "BatchStrOutput",
    "BatchEmbeddingOutput",
    "BatchMultimodalOutput",
]


def fields(cls):
    return [f.encode_name for f in msgspec.structs.fields(cls)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", help="JSON file to add this release to (printed to stdout otherwise)")
    args = ap.parse_args()
    version = importlib.metadata.version("sglang")
    layout = {name: fields(getattr(io_struct, name)) for name in CLASSES if hasattr(io_struct, name)}
    if isinstance(SamplingParams, type) and issubclass(SamplingParams, msgspec.Struct):
        layout["SamplingParams"] = fields(SamplingParams)
    if args.merge:
        try:
            doc = json.load(open(args.merge))
        except FileNotFoundError:
            doc = {}
        doc[version] = layout
        with open(args.merge, "w") as f:
            json.dump(dict(sorted(doc.items())), f, indent=1)
            f.write("\n")
        print(f"{args.merge}: SGLang {version}, {len(layout)} classes")
    else:
        print(json.dumps({version: layout}, indent=1))


if __name__ == "__main__":
    main()
