#!/bin/sh
# Seeds the fuzz corpora (fuzz/corpus/<target>/) from the CRIU 4.2 fixture images.
# Usage: fuzz/seed.sh [FIXTURES_DIR]   (default: $STASIS_FIXTURES or ../shared/fixtures)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
fixtures=${1:-${STASIS_FIXTURES:-$repo/../shared/fixtures}}
[ -d "$fixtures/criu-4.2" ] || { echo "no fixtures at $fixtures" >&2; exit 1; }
mkdir -p "$here/corpus"
cargo run --quiet --manifest-path "$repo/Cargo.toml" -p stasis-images --example fuzz_seeds -- \
    "$here/corpus" "$fixtures"/criu-4.2/*/
# Crashes found so far are seeds too.
for d in "$here"/regressions/*/; do
    [ -d "$d" ] || continue
    t=$(basename "$d")
    mkdir -p "$here/corpus/$t"
    cp "$d"/* "$here/corpus/$t/" 2>/dev/null || true
done
