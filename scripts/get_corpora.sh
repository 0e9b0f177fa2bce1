#!/usr/bin/env bash
# Fetch the public-domain books the experiments use from Project Gutenberg into data/corpora/:
#
#   bash scripts/get_corpora.sh [FOLDER]
#
# GUTENBERG_MIRROR sets another Project Gutenberg mirror (default https://www.gutenberg.org).
# Each book is downloaded by its ebook number as plain UTF-8 text, its line ends made LF, and cut to
# the story itself: from its opening words (below) to the end-of-book marker, so the Gutenberg licence
# header and footer (and any front matter) are left out. Books already present are kept.
set -euo pipefail

folder="${1:-$(dirname "$0")/../data/corpora}"
mkdir -p "$folder"

# file name | ebook number | the words the story opens with ("" keeps everything after the header)
books=(
  "sherlock_holmes_adventures_pg1661.txt|1661|To Sherlock Holmes she is always"
  "pride_and_prejudice_pg1342.txt|1342|It is a truth universally acknowledged"
  "alice_in_wonderland_pg11.txt|11|Alice was beginning to get very tired"
  "wizard_of_oz_pg55.txt|55|"
)

for entry in "${books[@]}"; do
  IFS="|" read -r name number opening <<<"$entry"
  target="$folder/$name"
  if [[ -s "$target" ]]; then
    echo "have $target"
    continue
  fi
  url="${GUTENBERG_MIRROR:-https://www.gutenberg.org}/cache/epub/$number/pg$number.txt"
  echo "fetching $url"
  raw="$(mktemp)"
  curl -fsSL --retry 3 "$url" -o "$raw"
  OPENING="$opening" python3 - "$raw" "$target.tmp" <<'PY'
import os
import sys

text = open(sys.argv[1], encoding="utf-8-sig").read().replace("\r\n", "\n")
start = text.find("*** START OF")
if start < 0:
    sys.exit(f"{sys.argv[1]}: no '*** START OF' marker; is this a Project Gutenberg text?")
text = text[text.index("\n", start) + 1 :]
end = text.find("*** END OF")
text = text[:end] if end >= 0 else text
opening = os.environ["OPENING"]
if opening:
    at = text.find(opening)
    if at < 0:
        sys.exit(f"{sys.argv[1]}: the opening words {opening!r} were not found")
    text = text[at:]
open(sys.argv[2], "w", encoding="utf-8").write(text.strip("\n") + "\n")
PY
  mv "$target.tmp" "$target"
  rm -f "$raw"
  echo "wrote $target ($(wc -c <"$target") bytes)"
done
