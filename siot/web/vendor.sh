#!/bin/sh
# Re-vendor the web UI's third-party JavaScript from the npm registry (docs/ui.md).
# Change a version below, run `sh siot/web/vendor.sh`, check the UI (tests/test_ui*.py), commit.
# Files are copied as npm publishes them (already minified), each with its package's LICENSE.
set -eu
PREACT=11.2.0
HTM=3.1.1
UPLOT=1.6.32

here=$(cd "$(dirname "$0")" && pwd)
out="$here/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() { # package version -> $work/<package>/package
	mkdir -p "$work/$1"
	(cd "$work/$1" && npm pack --silent "$1@$2" >/dev/null && tar xzf ./*.tgz)
}
fetch preact "$PREACT"
fetch htm "$HTM"
fetch uplot "$UPLOT"

rm -rf "$out"
mkdir -p "$out"
cp "$work/preact/package/dist/preact.mjs" "$out/preact.mjs"
cp "$work/preact/package/hooks/dist/hooks.mjs" "$out/preact-hooks.mjs"
cp "$work/preact/package/LICENSE" "$out/LICENSE.preact"
cp "$work/htm/package/dist/htm.mjs" "$out/htm.mjs"
cp "$work/htm/package/LICENSE" "$out/LICENSE.htm"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$work/uplot/package/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$work/uplot/package/LICENSE" "$out/LICENSE.uplot"
# The source maps the files name are not shipped; the browser asks for them only with its devtools open.
printf 'preact %s\nhtm %s\nuplot %s\n' "$PREACT" "$HTM" "$UPLOT" >"$out/VERSIONS"
ls -l "$out"
