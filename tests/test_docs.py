"""The README is a front page and docs/ the manual: every relative link in them resolves.

A link checker on the standard library only: each Markdown link in README.md and docs/**/*.md
whose target is relative must name a file that exists (relative to the linking file) and, where
it has a #anchor into a Markdown page, a heading of that page under GitHub's slug rules.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 10 * 1024  # bytes

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*$")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]+(?:\([^\s()]*\)[^\s()]*)*)"
                          r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
                fence = None
            continue
        out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): lowercase, punctuation and symbols
    dropped except hyphens and underscores, each space a hyphen; letters of any script kept."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    kept = [c for c in text if c in "-_ " or unicodedata.category(c) in ("Ll", "Lu", "Lt", "Lm", "Lo", "Mn", "Mc",
                                                                           "Me", "Nd", "Nl", "Pc")]
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page, duplicates numbered -1, -2 … as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(text):
        m = _HEADING.match(line)
        if not m:
            continue
        title = re.sub(r"[ \t]+#+$", "", m.group(2)) if m.group(2).strip("#") else ""
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    found = []
    for n, line in _prose_lines(text):
        m = _REF_DEF.match(line)
        if m:
            found.append((n, m.group(1)))
            continue
        bare = _CODE_SPAN.sub("", line)
        found += [(n, m.group(1)) for m in _INLINE_LINK.finditer(bare)]
    return [(n, t[1:-1] if t.startswith("<") else t) for n, t in found]


def check(page: Path) -> list[str]:
    """Broken relative links of one Markdown page, each as 'page:line: target: why'."""
    problems = []
    text = page.read_text(encoding="utf-8")
    for n, target in links(text):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto …: not ours to check offline
        path, _, anchor = target.partition("#")
        path, anchor = unquote(path), unquote(anchor)
        where = f"{page}:{n}: {target}"
        dest = (page.parent / path) if path else page
        if not dest.exists():
            problems.append(f"{where}: no such file {dest}")
            continue
        if not anchor:
            continue
        if dest.is_dir():
            dest = dest / "README.md"
            if not dest.exists():
                problems.append(f"{where}: #{anchor} into a folder without README.md")
                continue
        if dest.suffix.lower() != ".md":
            continue  # anchors of source files (#L10) are GitHub's viewer's, not headings
        if anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


def pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def test_every_relative_link_resolves():
    assert (ROOT / "docs" / "README.md").exists()
    problems = [p for page in pages() for p in check(page)]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_index():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / unquote(t.partition("#")[0])).resolve()
              for _, t in links(index.read_text(encoding="utf-8")) if not _SCHEME.match(t)}
    missing = [p.name for p in pages()[1:] if p != index and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


def test_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in text and "make demo" in text  # .ci/run runs the README's test command


def test_docs_pages_start_with_their_commands():
    for page in pages()[1:]:
        if page.name == "README.md":
            continue
        lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert lines[0].startswith("# ") and lines[1].startswith("```"), \
            f"{page.name}: a title, then the commands, then the details"


def test_slugs_follow_github():
    assert slug("Batched decoding and `toolkit bench`") == "batched-decoding-and-toolkit-bench"
    assert slug("GPU memory: `--n-gpu-layers auto`") == "gpu-memory---n-gpu-layers-auto"
    assert slug("Norms from the reference document (RAG)") == "norms-from-the-reference-document-rag"
    assert slug("Same answers?") == "same-answers"
    assert slug("한글 맞춤법·표준어 규정") == "한글-맞춤법표준어-규정"
    assert slug("q4_k_m → Q8_0") == "q4_k_m--q8_0"
    assert anchors("# A\n## Usage\n```\n# Usage\n```\n## Usage\n### Usage\n") == {"a", "usage", "usage-1", "usage-2"}


def test_the_checker_reports_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Real heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Here\n\n"
        "[fine](other.md#real-heading), [fine too](#here), [web](https://example.com/x.md#nope), "
        "`[in code](missing.md)`\n\n"
        "[gone](missing.md) and [wrong anchor](other.md#no-such-heading) and [self](#nowhere)\n\n"
        "```\n[fenced](also-missing.md)\n```\n\n[ref]: missing-too.md\n",
        encoding="utf-8")
    problems = check(page)
    assert len(problems) == 4, problems
    assert any("missing.md" in p and "no such file" in p for p in problems)
    assert any("#no-such-heading" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
    assert any("missing-too.md" in p for p in problems)
