"""Writes the "Errors and warnings" entries of every node's help page from the troubleshooting
page (js/docs/troubleshooting.md), or with --check says which pages differ from it.

ComfyUI's node help panel opens a link in a new browser tab as it is written (frontend 1.32
and 1.49): a relative link to troubleshooting.md#entry lands on a missing page, or at best on
the raw file, where an anchor cannot scroll. So each help page carries the text of the entries
its node can give. A page names them in a marker line,

    <!-- troubleshooting entries: model-family-not-supported, no-subjects-on-the-conditioning -->

(the entries' anchors on GitHub), and this script writes each entry's heading and text after
it, up to the line <!-- end of troubleshooting entries -->.

    python tests/harness/help_pages.py [--check]
"""
import argparse
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "js" / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
START = re.compile(r"^<!-- troubleshooting entries: (.*) -->$", re.M)
END = "<!-- end of troubleshooting entries -->"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def entries(page: str) -> dict[str, tuple[str, str]]:
    """anchor -> (heading, text) of every ### entry of the troubleshooting page."""
    found, heading, lines = {}, None, []
    for line in page.splitlines() + ["## end"]:
        if line.startswith("#"):
            if heading is not None:
                found[slug(heading)] = (heading, "\n".join(lines).strip())
            heading, lines = (line[4:], []) if line.startswith("### ") else (None, [])
        elif heading is not None:
            lines.append(line)
    return found


def filled(page: str, known: dict[str, tuple[str, str]]) -> str:
    """The help page with its marked entries written out from `known`; ValueError for an anchor
    that is not an entry, or a page without its markers."""
    start = START.search(page)
    if start is None or END not in page[start.end():]:
        raise ValueError("no '<!-- troubleshooting entries: ... -->' ... '" + END + "' block")
    anchors = [a.strip() for a in start.group(1).split(",") if a.strip()]
    missing = [a for a in anchors if a not in known]
    if missing:
        raise ValueError(f"not entries of troubleshooting.md: {', '.join(missing)}")
    body = "\n\n".join(f"#### {known[a][0]}\n{known[a][1]}" for a in anchors)
    end = page.index(END, start.end())
    return page[:start.end()] + "\n\n" + body + "\n\n" + page[end:]


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p != TROUBLESHOOTING)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    args = parser.parse_args()
    known = entries(TROUBLESHOOTING.read_text(encoding="utf-8"))
    stale = []
    for path in pages():
        text = path.read_text(encoding="utf-8")
        new = filled(text, known)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(("differ from troubleshooting.md: " if args.check else "rewrote: ") + ", ".join(stale))
    sys.exit(1 if stale and args.check else 0)


if __name__ == "__main__":
    main()
