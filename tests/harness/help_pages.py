"""Writes the generated parts of every node's help page, or with --check says which pages differ:
the "Errors and warnings" entries from the troubleshooting page (js/docs/troubleshooting.md), the
guidance parameters' table from the README's (written there by hand, once), and the part the two
sampler pages share from tests/harness/sampler_guide.md.

ComfyUI's node help panel opens a link in a new browser tab as it is written (frontend 1.32
and 1.49): a relative link to troubleshooting.md#entry lands on a missing page, or at best on
the raw file, where an anchor cannot scroll. So each help page carries the text of the entries
its node can give. A page names them in a marker line,

    <!-- troubleshooting entries: model-family-not-supported, no-subjects-on-the-conditioning -->

(the entries' anchors on GitHub), and this script writes each entry's heading and text after
it, up to the line <!-- end of troubleshooting entries -->.

The other two are marked the same way, between <!-- generated: NAME --> and <!-- end of generated -->:
"parameters" (optionally "parameters, without: heatmap_step, mask_threshold" for a node without those
inputs) and "sampler guide".

    python tests/harness/help_pages.py [--check]
"""
import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "js" / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
SAMPLER_GUIDE = Path(__file__).with_name("sampler_guide.md")
START = re.compile(r"^<!-- troubleshooting entries: (.*) -->$", re.M)
END = "<!-- end of troubleshooting entries -->"
GENERATED = re.compile(r"^<!-- generated: ([\w ]+?)(?:, without: (.*?))? -->\n.*?^<!-- end of generated -->$",
                       re.M | re.S)
# The README's pointers to its own sections, as a help page says them.
README_POINTERS = {"see *Which method for which failure*": "see *Losses* below",
                   "see *What your card needs*": "see *Memory* below"}


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


def parameter_rows() -> list[str]:
    """The README's parameter table, header included, its pointers said as a help page says them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("| parameter | default | meaning |")
    rows = readme[start:readme.index("\n\n", start)].splitlines()
    for pointer, said in README_POINTERS.items():
        rows = [row.replace(pointer, said) for row in rows]
    return rows


def generated(page: str) -> str:
    """The page with its generated blocks written again from their sources."""
    def block(match):
        name, without = match.group(1), {w.strip() for w in (match.group(2) or "").split(",") if w.strip()}
        if name == "parameters":
            body = "\n".join(row for row in parameter_rows()
                             if not set(re.findall(r"`(\w+)`", row.split("|")[1])) & without)
        elif name == "sampler guide":
            body = SAMPLER_GUIDE.read_text(encoding="utf-8").strip()
        else:
            raise ValueError(f"no generated block named {name!r}")
        return match.group(0).split("\n", 1)[0] + "\n" + body + "\n<!-- end of generated -->"
    return GENERATED.sub(block, page)


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
        new = generated(filled(text, known))
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(("differ from their sources: " if args.check else "rewrote: ") + ", ".join(stale))
    sys.exit(1 if stale and args.check else 0)


if __name__ == "__main__":
    main()
