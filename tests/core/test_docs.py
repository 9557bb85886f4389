"""The user documentation stays true to the code: every message the package raises or warns
with is on the troubleshooting page, every path, make target and node the README names exists,
and every help page's links land on an entry of that page."""
import ast
import functools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TROUBLESHOOTING = ROOT / "js" / "docs" / "troubleshooting.md"
README = ROOT / "README.md"
SHORTEST_CHUNK = 12     # shorter literal pieces ("; known: ") say nothing on their own
WARNING_CALLS = {"warning", "error", "warn"}
REASON_LISTS = {"reasons", "blockers"}      # the eager-pass reasons, shown in the log


def _literal_chunks(node) -> list[str] | None:
    """The fixed text of a message expression, split where a value is put in; None if it has none."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.split(r"%[sdrf]", node.value)
    if isinstance(node, ast.JoinedStr):
        chunks, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            else:
                chunks.append(current)
                current = ""
        return chunks + [current]
    return None


def _message_argument(node):
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
        return node.exc.args[0]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        owner = node.func.value
        if node.func.attr in WARNING_CALLS or \
                node.func.attr == "append" and isinstance(owner, ast.Name) and owner.id in REASON_LISTS:
            return node.args[0]
    if isinstance(node, ast.FunctionDef) and node.name == "validate_inputs":
        returned = [r.value for r in ast.walk(node) if isinstance(r, ast.Return)]
        return next((value for value in returned if isinstance(value, ast.JoinedStr)), None)
    return None


def messages_of(source: str, name: str) -> list[tuple[str, list[str]]]:
    """(where, the message's fixed pieces) of every raise, warning, eager-pass reason and
    validation message in a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        argument = _message_argument(node)
        chunks = _literal_chunks(argument) if argument is not None else None
        if chunks is not None:
            found.append((f"{name}:{node.lineno}", chunks))
    return found


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def undocumented(messages: list[tuple[str, list[str]]], page: str) -> list[str]:
    text = _normalised(page)
    return [f"{where}: {'…'.join(chunks)!r}" for where, chunks in messages
            if any(len(chunk.strip()) >= SHORTEST_CHUNK and _normalised(chunk) not in text for chunk in chunks)]


def package_messages() -> list[tuple[str, list[str]]]:
    return [m for path in sorted((ROOT / "nodes").rglob("*.py"))
            for m in messages_of(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


def test_every_message_the_package_gives_is_on_the_troubleshooting_page():
    messages = package_messages()
    assert len(messages) >= 45      # the collector still finds them: raises, warnings, reasons, validation
    assert undocumented(messages, TROUBLESHOOTING.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("planted", [
    'raise ValueError(f"the frobnicator {name} is out of tune; retune it")',
    'logging.warning("Attend-and-Excite: the frobnicator is %s degrees out of tune", 3)',
    'reasons.append("the frobnicator is out of tune")',
    'def validate_inputs(cls, x):\n    return f"frobnicator {x} is out of tune"',
])
def test_a_planted_undocumented_message_is_found(planted):
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "nodes" / "glue").glob("*.py"))
    page = TROUBLESHOOTING.read_text(encoding="utf-8")
    assert undocumented(messages_of(source, "glue"), page) == []
    missing = undocumented(messages_of(source + "\n" + planted + "\n", "glue"), page)
    assert len(missing) == 1 and "frobnicator" in missing[0]


# What only a clone of the repository has: a Registry or ComfyUI-Manager install has no Makefile,
# no tests, no .ci and no git history to check a file out of.
MAKE_TARGETS = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
CLONE_ONLY = re.compile(rf"\bmake ({'|'.join(MAKE_TARGETS)})\b|\bMakefile\b|\btests/|\.ci/|\bpytest\b|"
                        r"\bgit (checkout|restore|stash)\b|comfy_env|train_demo")


def clone_only(texts: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: {CLONE_ONLY.search(text).group(0)!r}" for where, text in texts if CLONE_ONLY.search(text)]


def test_no_message_or_troubleshooting_entry_asks_for_what_only_a_git_clone_has():
    messages = [(where, "…".join(chunks)) for where, chunks in package_messages()]
    assert clone_only(messages) == []
    pages = [(page.name, page.read_text(encoding="utf-8")) for page in sorted((ROOT / "js" / "docs").glob("*.md"))]
    assert len(pages) == 9 and clone_only(pages) == []
    planted = [("planted", "the weights are missing; train them again with 'make demo-model'"),
               ("planted", "restore them with `git checkout nodes/demo`"),
               ("planted", "see tests/README.md")]
    assert len(clone_only(planted)) == 3


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: str) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.splitlines() if line.startswith("#")}


def node_ids() -> set[str]:
    return set(re.findall(r'node_id="(\w+)"', "".join(p.read_text() for p in (ROOT / "nodes").glob("*.py"))))


def test_every_node_has_a_help_page_with_its_troubleshooting_entries_written_in():
    """ComfyUI's help panel cannot follow a link to an anchor of another page (it opens the raw
    file in a new tab), so each page carries its entries' text: equal to the troubleshooting
    page's, as tests/harness/help_pages.py writes them; and its pictures exist."""
    from harness.help_pages import entries, filled, generated
    known = entries(TROUBLESHOOTING.read_text(encoding="utf-8"))
    assert len(known) >= 35
    assert len(node_ids()) == 8
    for node in node_ids():
        page = (ROOT / "js" / "docs" / f"{node}.md").read_text(encoding="utf-8")
        assert re.search(r"^#### ", page, re.M), f"{node}'s help page lists no troubleshooting entry"
        assert generated(filled(page, known)) == page, f"{node}'s page differs from its sources: run help_pages.py"
        assert "](troubleshooting.md" not in page      # a link the help panel cannot follow
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
            assert (ROOT / "js" / "docs" / image).is_file(), image


SAMPLER_PAGES = ["AttendExciteKSampler.md", "AttendExciteSampler.md"]
DEVELOPER_STATUS = re.compile(r"tiny models?|random weights|real weights|not (yet )?(run|measured|tested)|untested|"
                              r"no GPU|CPU machine|this project|the tests?\b", re.I)


def test_the_sampler_pages_are_short_share_one_guide_and_speak_to_users():
    """Each under 120 lines, the parameter table the README's (generated), the shared part one source,
    at most five error entries, no developer status (what is untested is said once, in the README)."""
    from harness.help_pages import SAMPLER_GUIDE, parameter_rows
    guide = SAMPLER_GUIDE.read_text(encoding="utf-8").strip()
    rows = parameter_rows()
    assert len(rows) >= 14 and "| `scale_factor` | 20 |" in "\n".join(rows)
    for name in SAMPLER_PAGES:
        page = (ROOT / "js" / "docs" / name).read_text(encoding="utf-8")
        assert len(page.splitlines()) < 120, name
        assert guide in page and rows[2] in page and rows[-1] in page
        assert 1 <= len(re.findall(r"^#### ", page, re.M)) <= 5
    for page in sorted((ROOT / "js" / "docs").glob("AttendExcite*.md")):
        assert DEVELOPER_STATUS.findall(page.read_text(encoding="utf-8")) == [], page.name
    assert DEVELOPER_STATUS.search("tested on tiny models only, no real weights yet")


def test_a_help_page_whose_parameter_table_drifted_from_the_readme_is_found():
    from harness.help_pages import generated
    page = (ROOT / "js" / "docs" / "AttendExciteSampler.md").read_text(encoding="utf-8")
    drifted = page.replace("| `max_refinement` | 20 |", "| `max_refinement` | 25 |")
    assert drifted != page and generated(drifted) == page
    assert "`heatmap_step`" not in page and "`heatmap_step`" in generated(page.replace(
        "parameters, without: heatmap_step, mask_threshold", "parameters"))


def test_a_stale_or_unknown_entry_on_a_help_page_is_found():
    from harness.help_pages import entries, filled
    known = entries(TROUBLESHOOTING.read_text(encoding="utf-8"))
    page = (ROOT / "js" / "docs" / "AttendExciteHeatmaps.md").read_text(encoding="utf-8")
    stale = page.replace("connect the *attention* output", "connect an output")
    assert filled(stale, known) != stale and filled(stale, known) == page
    with pytest.raises(ValueError, match="not entries of troubleshooting.md: no-such-entry"):
        filled(page.replace("entries: no-guided-step-recorded", "entries: no-such-entry"), known)


REPOSITORY_URL = "https://github.com/attend-and-excite/ComfyUI-Attend-and-Excite"
REPOSITORY_LINK = re.compile(re.escape(REPOSITORY_URL) + r"(?:/blob/main/([\w./-]+))?(?:#([\w-]+))?")


def user_texts() -> list[tuple[str, str]]:
    """What a user reads inside ComfyUI: the help pages and the templates' notes."""
    import json
    texts = [(p.name, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "js" / "docs").glob("AttendExcite*.md"))]
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        notes = [n["widgets_values"][0] for n in json.loads(path.read_text())["nodes"]
                 if n["type"] in ("Note", "MarkdownNote")]
        texts.append((path.name, "\n".join(notes)))
    return texts


def broken_pointers(name: str, text: str) -> list[str]:
    """Links to this repository whose file or heading does not exist; mentions of the README with
    no link to one of its sections; 'see *X* below' with no heading X on the page."""
    broken = []
    for match in REPOSITORY_LINK.finditer(text):
        target = ROOT / (match.group(1) or "README.md")
        if not target.is_file():
            broken.append(f"{name}: {match.group(0)}: no such file")
        elif match.group(2) and match.group(2) not in anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{name}: {match.group(0)}: no such section")
    for mention in re.finditer(r"README", text):
        link = REPOSITORY_LINK.search(text, mention.end())
        if link is None or link.start() - mention.end() > 200 or not link.group(2) or link.group(1):
            broken.append(f"{name}: mentions the README with no link to its section: {text[mention.start():][:60]!r}")
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    for section in re.findall(r"[Ss]ee \*([^*]+)\* (?:below|above)", text):
        if section not in headings:
            broken.append(f"{name}: 'see *{section}*' names no heading of the page")
    return broken


def test_every_pointer_in_the_help_pages_and_template_notes_lands():
    texts = user_texts()
    assert len(texts) >= 14
    assert [b for name, text in texts for b in broken_pointers(name, text)] == []


def test_a_stale_pointer_is_found():
    planted = [f"the measured effect is in the README ({REPOSITORY_URL}#demo-model)",
               "see Demo model in the package README", f"[the page]({REPOSITORY_URL}/blob/main/js/docs/nothing.md)",
               "see *Losses* below"]
    assert [len(broken_pointers("planted", text)) for text in planted] == [1, 1, 1, 1]
    assert broken_pointers("fine", f"in [the README's Cost section]({REPOSITORY_URL}#cost)") == []


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_short():
    assert len(readme().splitlines()) <= 250


def missing_paths(text: str) -> tuple[int, list[str]]:
    """(how many repository paths the text names, those that do not exist)."""
    named = set(re.findall(r"`([\w./-]+/[\w./-]*|[\w-]+\.(?:json|py|md|toml|txt|jpg|safetensors))`", text))
    named |= {link for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)}
    written = {".comfy/"}     # made by the commands
    checkpoints = {n for n in named if n.endswith(".safetensors") and not n.startswith("nodes/")}
    return len(named), sorted(n for n in named - written - checkpoints
                              if not n.startswith(("out/", "/", "http")) and not (ROOT / n).exists()
                              and not ("/" not in n and n in shipped_file_names()))


@functools.cache
def shipped_file_names() -> set[str]:
    """The file names under the package's and the tests' folders: a table row may name a file of its folder
    by its bare name."""
    return {p.name for folder in ("nodes", "js", "tests", "example_workflows") for p in (ROOT / folder).rglob("*")}


def unknown_targets(text: str) -> tuple[set, set]:
    """(the make targets the text names, those the Makefile lacks)."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = set(re.findall(r"make ([a-z][\w-]*)", text))
    return used, used - targets


def test_every_path_the_readme_names_exists():
    named, missing = missing_paths(readme())
    assert named > 15 and missing == []


def test_the_contributors_guide_names_only_files_and_targets_that_exist():
    """The newcomer's path: the README points to CONTRIBUTING.md, whose paths and commands are real."""
    guide = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    assert "](CONTRIBUTING.md)" in readme()
    named, missing = missing_paths(guide)
    used, unknown = unknown_targets(guide)
    assert named > 30 and missing == [] and len(used) > 8 and unknown == set()
    assert 100 <= len(guide.splitlines()) <= 250


def test_a_stale_path_or_target_in_the_guide_is_found():
    assert missing_paths("see `nodes/core/no_such_file.py`")[1] == ["nodes/core/no_such_file.py"]
    assert unknown_targets("run `make no-such-target`")[1] == {"no-such-target"}


def test_every_make_target_and_node_the_readme_names_exists():
    text = readme()
    used, unknown = unknown_targets(text)
    assert used and unknown == set()
    ids = set(re.findall(r"`(AttendExcite\w+)`", text))
    assert ids == node_ids()
    displays = set(re.findall(r'display_name="([^"]+)"', "".join(p.read_text() for p in (ROOT / "nodes").glob("*.py"))))
    for name in re.findall(r"\*\*([^*]+)\*\* \(`AttendExcite", text):
        assert name in displays, name


DEVELOPER_PAGES = ["CONTRIBUTING.md", "docs/design.md", "tests/README.md"]
COMMIT_OR_DATE = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b|\b20\d\d-\d\d-\d\d\b")


def diary(text: str) -> list[str]:
    """Commit hashes and dates in prose; the generated figures' blocks carry their run's date and are left out."""
    prose = re.sub(r"<!-- figures: .*?<!-- end of figures -->", "", text, flags=re.S)
    return COMMIT_OR_DATE.findall(prose)


def test_the_developer_pages_keep_no_diary_and_show_the_published_runs():
    """Current state in prose, history in git: no commit hash or date outside the figures, whose tables are
    what the benchmark writes from the runs in docs/figures/ (each with its machine, date and code)."""
    from harness.benchmark import figures_blocks
    for page in DEVELOPER_PAGES:
        assert diary((ROOT / page).read_text(encoding="utf-8")) == [], page
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    blocks = figures_blocks()
    assert blocks.count("<!-- figures:") >= 3 and blocks in design
    for path in sorted((ROOT / "docs" / "figures").glob("*.json")) + sorted((ROOT / "js" / "docs").glob("*.json")):
        run = json.loads(path.read_text())["run"]
        assert {"machine", "date", "package_version", "commit"} <= set(run), path.name
    assert len((ROOT / "tests" / "README.md").read_text().splitlines()) <= 250


def test_a_commit_or_date_in_prose_is_found():
    assert diary("measured at 4fe4245 on 2026-12-03") == ["4fe4245", "2026-12-03"]
    assert diary("<!-- figures: x -->\nH200, 2026-11-30\n<!-- end of figures -->\n276 prompts, seed 1234567") == []
