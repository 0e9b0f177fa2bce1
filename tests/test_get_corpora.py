"""scripts/get_corpora.sh: books fetched by ebook number and cut to the story itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "get_corpora.sh"
OPENINGS = {1661: "To Sherlock Holmes she is always THE woman.", 1342: "It is a truth universally acknowledged.",
            11: "Alice was beginning to get very tired.", 55: "The Wonderful Wizard of Oz"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_books_are_fetched_by_number_and_cut_to_the_story(tmp_path):
    mirror = tmp_path / "mirror"
    for number, opening in OPENINGS.items():
        folder = mirror / "cache" / "epub" / str(number)
        folder.mkdir(parents=True)
        text = (f"\ufeffThe Project Gutenberg eBook {number}\r\nLicence words.\r\n"
                f"*** START OF THE PROJECT GUTENBERG EBOOK {number} ***\r\n\r\nTitle page\r\nContents\r\n\r\n"
                f"{opening}\r\nSecond line of the story.\r\n\r\n"
                f"*** END OF THE PROJECT GUTENBERG EBOOK {number} ***\r\nMore licence.\r\n")
        (folder / f"pg{number}.txt").write_bytes(text.encode("utf-8"))
    out = tmp_path / "corpora"
    env = {**os.environ, "GUTENBERG_MIRROR": mirror.as_uri()}
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sherlock = (out / "sherlock_holmes_adventures_pg1661.txt").read_text(encoding="utf-8")
    assert sherlock == "To Sherlock Holmes she is always THE woman.\nSecond line of the story.\n"
    oz = (out / "wizard_of_oz_pg55.txt").read_text(encoding="utf-8")  # no opening words: all after the header
    assert oz.startswith("Title page\nContents\n\nThe Wonderful Wizard of Oz") and "Licence" not in oz
    again = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert again.stdout.count("have ") == 4  # present books are kept
