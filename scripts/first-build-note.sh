#!/usr/bin/env bash
# Says before a first build that it is the longest wait a newcomer meets:
# several hundred crates compile from source (about 5 minutes on 2 cores;
# later builds take seconds to a minute). Silent once target/$1 exists.
target=${CARGO_TARGET_DIR:-target}/$1
if [[ ! -e $target ]]; then
  echo "First build: compiling the dependencies from source takes about 5 minutes on 2 cores" >&2
  echo "(later builds only recompile what changed)." >&2
fi
