#!/usr/bin/env bash
# Fetches the book's JavaScript from npm, once, into book/_vendor/ (git-ignored):
#   MathJax 3, which renders the math, and
#   ipywidgets' HTML manager, which draws the widgets from the state saved in a notebook.
# book/build.sh copies them into the site, so the build and the site need no network.
# Usage: bash book/vendor.sh   (run again: it fetches only what is missing or of another version)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p _vendor
cd _vendor

fetch() {  # fetch NPM_NAME VERSION DIR: the package's files in _vendor/DIR
  local name=$1 version=$2 dir=$3
  if [ -f "$dir/package.json" ] && grep -q "\"version\": *\"$version\"" "$dir/package.json"; then
    return
  fi
  local tarball
  tarball=$(npm pack --silent "$name@$version" | tail -n 1)
  rm -rf "$dir" && mkdir "$dir"
  tar -xzf "$tarball" -C "$dir" --strip-components=1  # npm tarballs hold one folder, package/
  rm -f "$tarball"
  echo "book/_vendor/$dir: $name $version"
}

fetch mathjax 3.2.2 mathjax
fetch @jupyter-widgets/html-manager 1.0.15 html-manager
