"""The README's examples run as written, and the links between README.md and docs/ resolve.

The ```python blocks of README.md run in order in one fresh interpreter, in a
temporary directory whose SQLite file ``$STUDYHALL_STORAGE`` points to, with
neither the checkout nor ``$PYTHONPATH`` on ``sys.path``: only the installed
``studyhall`` package answers their imports. A block that needs something the
test cannot give it is marked in the README with ``<!-- not run: why -->`` on the
line before it; those are skipped there, and the one that needs ``studyhall
serve`` runs below against a server of its own.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.*?)\s*-->")
MAX_NOT_RUN = 2  # keep the README's examples proven: few blocks may opt out


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    line: int  # the line of its opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason given in a `<!-- not run: ... -->` comment before it


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in order (``` or ~~~ fences, any language)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            i += 1
        i += 1  # the closing fence
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        found = NOT_RUN.search(before)
        blocks.append(Block(start + 1, lang.lower(), "\n".join(body) + "\n", found["why"] if found else None))
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a markdown file."""
    return [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.lang in ("python", "py")]


def _clean_env(tmp_path: Path, db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STUDYHALL_TOKEN")}
    env.update(STUDYHALL_STORAGE=f"sqlite:///{tmp_path / db}", COLUMNS="150", PYTHONUNBUFFERED="1")
    return env


def _run_script(code: str, tmp_path: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "readme_examples.py"
    script.write_text(code, encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"the examples ran past {timeout:g}s; stderr so far:\n{err[-4000:]}")


def test_readme_python_blocks_run_in_order(tmp_path: Path) -> None:
    blocks = python_blocks(README)
    assert len(blocks) >= 4, "the README lost its examples"
    for b in blocks:  # a syntax error names its block, skipped ones included
        compile(b.code, f"README.md:{b.line}", "exec")
    skipped = [b for b in blocks if b.not_run is not None]
    assert len(skipped) <= MAX_NOT_RUN, f"too many README blocks opt out of this test: {[b.line for b in skipped]}"
    for b in skipped:
        assert len(b.not_run or "") >= 10, f"README.md:{b.line}: say why the block is not run"
    run = [b for b in blocks if b.not_run is None]
    # Each block announces itself on stderr, so a failure names the README line it came from.
    code = "".join(f"__import__('sys').stderr.write('[README.md:{b.line}]\\n')\n{b.code}\n" for b in run)
    started = time.monotonic()
    proc = _run_script(
        code, tmp_path, _clean_env(tmp_path, "readme.db"), timeout=110
    )  # under pytest-timeout's 120 s, so the output is kept
    took = time.monotonic() - started
    last = re.findall(r"\[README\.md:(\d+)\]", proc.stderr)
    where = f"README.md:{last[-1]}" if last else "before the first block"
    assert proc.returncode == 0, (
        f"the README's examples failed in the block at {where}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-5000:]}"
    )
    assert len(last) == len(run)
    assert took < 90, f"the README's examples took {took:.0f}s; keep them small (n_trials, valset)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_service_block_runs_against_a_real_server(tmp_path: Path) -> None:
    blocks = [b for b in python_blocks(README) if b.not_run and "studyhall serve" in b.not_run]
    assert blocks, "the README's Client example (marked 'not run: needs `studyhall serve`') is gone"
    port = _free_port()
    env = _clean_env(tmp_path, "service.db")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "studyhall"), "serve", "--port", str(port), "--log-level", "warning"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"studyhall serve did not come up on port {port}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        for b in blocks:
            assert "http://127.0.0.1:8765" in b.code, f"README.md:{b.line}: expected the default address"
            code = b.code.replace("http://127.0.0.1:8765", f"http://127.0.0.1:{port}")
            proc = _run_script(code, tmp_path, env, timeout=60)
            assert proc.returncode == 0, f"README.md:{b.line} failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---- links and import names ---------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
OLD_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:optimizer|bridge|storage)\b", re.MULTILINE)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links in code are not links)."""
    out, fence = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append(re.sub(r"`+[^`]*`+", "", line))
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text stays
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def _headings_with_code(path: Path) -> str:
    # Headings may hold inline code (`studyhall serve`); _prose drops inline code, so
    # read headings from the raw text outside fences instead.
    out, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        if line.startswith("#"):
            out.append(line)
    return "\n".join(out)


def _heading_anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _headings_with_code(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_relative_links_resolve() -> None:
    assert (DOCS / "README.md").exists(), "docs/README.md, the index of the docs, is missing"
    broken = []
    for page in _pages():
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path_part, _, fragment = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where} -> no such file")
            elif fragment and dest.suffix == ".md" and fragment not in _heading_anchors(dest):
                broken.append(f"{where} -> no heading with anchor #{fragment}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_in_the_index() -> None:
    index = _prose((DOCS / "README.md").read_text(encoding="utf-8"))
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in LINK.findall(index) if not t.startswith("http")}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and p.resolve() not in linked]
    assert not missing, f"docs pages not listed in docs/README.md: {missing}"


def test_no_top_level_package_imports_in_readme_or_docs() -> None:
    # Only `studyhall` installs: `from optimizer import ...` would fail for every reader.
    bad = []
    for page in _pages():
        for b in code_blocks(page.read_text(encoding="utf-8")):
            for m in OLD_IMPORT.finditer(b.code):
                bad.append(f"{page.relative_to(ROOT)}:{b.line}: {m.group(0).strip()}")
    assert not bad, "imports of packages that no longer install (use studyhall...):\n" + "\n".join(bad)
