#!/usr/bin/env bash
# Builds the book from the committed notebooks (never executed), README.md and docs/*.md.
# Usage: bash book/build.sh [OUTPUT_DIR]      (default: book/_build/html)
# Needs the Python packages of book/requirements.txt and, once, `bash book/vendor.sh`
# (MathJax and ipywidgets' HTML manager from npm). Installs nothing and uses no network.
# Warnings, broken links among them, fail the build; BRLIB_BOOK_STRICT=0 keeps them warnings.
# PYTHON selects the interpreter (default: python).
set -euo pipefail
book=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$book/_build/html}")
python=${PYTHON:-python}

# OUTPUT_DIR is replaced whole, so it must be new, empty or an earlier build.
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/.buildinfo" ]; then
  echo "build.sh: $out is neither empty nor an earlier build; not replacing it" >&2
  exit 2
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
"$python" "$book/stage.py" "$stage/src"

strict=(-W --keep-going)
[ "${BRLIB_BOOK_STRICT:-1}" = 0 ] && strict=()
# Sphinx writes notebook images next to its output folder, so it builds in the scratch
# folder and the site is moved into place afterwards.
start=$SECONDS
"$python" -m sphinx -b html -q "${strict[@]}" -d "$stage/doctrees" "$stage/src" "$stage/html"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$stage/html" "$out"
echo "book: $(find "$out" -name '*.html' | wc -l) HTML pages in $out ($((SECONDS - start)) s)"
