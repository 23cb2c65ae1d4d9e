"""Code and data provenance: the git commit and the DVC data version of a run."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(project_dir: Path) -> str:
    """HEAD's sha, suffixed `-dirty` when tracked files differ from it; `unknown` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
