#!/usr/bin/env bash
# Counts the runtime's public API as its documentation shows it: every item
# page rustdoc writes (structs, enums, traits, functions, constants, type
# aliases, macros, statics, modules) and every re-export line that gives an
# item a second path. Items under the hidden `__private` module (what only
# generated code and the command-line tools call) are not counted.
#
#   bash scripts/public-api.sh            # the runtime, features cuda and mpi
#   CRATE=sparsenet bash scripts/public-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CRATE=${CRATE:-sparsenet-runtime}
DIR=${CRATE//-/_}
cargo doc --no-deps -p "$CRATE" --features cuda,mpi --quiet 2>/dev/null
root=target/doc/$DIR
python3 - "$root" <<'PY'
import os, re, sys, collections
root = sys.argv[1]
kinds = collections.Counter()
items = []
for dirpath, _, files in os.walk(root):
    if "__private" in dirpath:
        continue
    for f in files:
        m = re.match(r"(struct|enum|trait|fn|constant|type|macro|static|union|traitalias)\.(.+)\.html$", f)
        # rustdoc leaves a redirect page at an item's private module path;
        # only the page at the public path is an item of the API.
        if m and "http-equiv=\"refresh\"" in open(os.path.join(dirpath, f), encoding="utf-8").read(2000):
            continue
        if m:
            kinds[m.group(1)] += 1
            items.append(os.path.relpath(os.path.join(dirpath, f), root))
        elif f == "index.html" and dirpath != root and "http-equiv=\"refresh\"" not in open(os.path.join(dirpath, f), encoding="utf-8").read(2000):
            kinds["mod"] += 1
reexports = 0
for dirpath, _, files in os.walk(root):
    if "__private" in dirpath or "index.html" not in files:
        continue
    text = open(os.path.join(dirpath, "index.html"), encoding="utf-8").read()
    sec = re.search(r'id="reexports".*?</dl>', text, re.S)
    if sec:
        reexports += len(re.findall(r'<dt', sec.group(0)))
total = sum(kinds.values())
if os.environ.get("LIST"):
    print("\n".join(sorted(items)))
print(f"{total} items ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); {reexports} re-export lines")
PY
