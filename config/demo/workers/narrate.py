#!/usr/bin/env python3
"""Demo worker `narrate` (spawn mode): turns gathered changes into prose.

A stand-in for an LLM CLI: it reads its rendered prompt and the gather
task's output from the task record and writes Markdown release notes.
"""
import collections
import json
import sys

task = json.load(sys.stdin)
gathered = task["deps"]["gather"]["output"]
commits = gathered.get("commits", [])
prompt = task.get("prompt") or ""

KINDS = [
    ("feat", "New features"), ("fix", "Fixes"), ("perf", "Performance"),
    ("docs", "Documentation"), ("test", "Tests"), ("refactor", "Refactoring"),
]


def kind_of(subject):
    head = subject.split(":", 1)[0].lower()
    for key, title in KINDS:
        if head.startswith(key):
            return title
    first = subject.split(" ", 1)[0].lower()
    if first in ("add", "adds", "added", "new"):
        return "New features"
    if first in ("fix", "fixes", "fixed"):
        return "Fixes"
    return "Other changes"


groups = collections.OrderedDict()
for c in commits:
    groups.setdefault(kind_of(c["subject"]), []).append(c)
authors = sorted({c["author"] for c in commits if c["author"]})

lines = ["# Release notes", ""]
if commits:
    who = f" by {len(authors)} author{'s' if len(authors) != 1 else ''}" if authors else ""
    lines.append(
        f"This release brings {len(commits)} change{'s' if len(commits) != 1 else ''}{who}, "
        f"read from {gathered.get('source', 'the repository')}. "
        + " ".join(f"{len(v)} {k.lower()}." for k, v in groups.items())
    )
else:
    lines.append("Nothing changed since the last release.")
for title, items in groups.items():
    lines += ["", f"## {title}", ""]
    for c in items:
        ref = f" ({c['hash']})" if c["hash"] not in ("", "-") else ""
        lines.append(f"- {c['subject']}{ref}")
lines += ["", f"_Written from a prompt of {len(prompt.splitlines())} lines._"]

print(f"narrated {len(commits)} changes into {len(groups)} sections", file=sys.stderr)
json.dump({"markdown": "\n".join(lines) + "\n", "sections": list(groups)}, sys.stdout)
