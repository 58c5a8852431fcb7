#!/usr/bin/env python3
"""Demo worker `gather` (spawn mode): collects what changed in a repository.

Reads the task record on stdin. With git and a repository at input.repo, it
reads `git log`; otherwise it surveys the folder's files. Prints JSON.
"""
import json
import os
import subprocess
import sys

task = json.load(sys.stdin)
inp = task.get("input") or {}
repo = inp.get("repo") or os.getcwd()
limit = int(inp.get("limit", 30))

commits = []
try:
    out = subprocess.run(
        ["git", "-C", repo, "log", f"-n{limit}", "--date=short",
         "--pretty=format:%h%x09%an%x09%ad%x09%s"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    for line in out.splitlines():
        h, author, date, subject = (line.split("\t", 3) + ["", "", ""])[:4]
        commits.append({"hash": h, "author": author, "date": date, "subject": subject})
except (OSError, subprocess.SubprocessError):
    commits = []

if commits:
    result = {"source": "git log", "repo": repo, "commits": commits}
else:
    # No git history: describe the files instead, newest first.
    files = []
    for root, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "target"]
        for n in names:
            p = os.path.join(root, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            files.append((st.st_mtime, os.path.relpath(p, repo), st.st_size))
    files.sort(reverse=True)
    commits = [
        {"hash": "-", "author": "", "date": "", "subject": f"update {rel} ({size} bytes)"}
        for _, rel, size in files[:limit]
    ]
    result = {"source": "files", "repo": repo, "commits": commits}

print(f"gathered {len(commits)} changes from {result['source']} in {repo}", file=sys.stderr)
json.dump(result, sys.stdout)
