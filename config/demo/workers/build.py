#!/usr/bin/env python3
"""Demo worker `build` (spawn mode): renders the notes as an HTML page.

Writes input.out/release-notes.html and answers with its path through the
result file ($WORKBUS_RESULT_FILE), the other way a spawned program may answer.
"""
import html
import json
import os
import sys

task = json.load(sys.stdin)
md = task["deps"]["narrate"]["output"]["markdown"]
out_dir = (task.get("input") or {}).get("out") or os.getcwd()
os.makedirs(out_dir, exist_ok=True)

body = []
in_list = False
for line in md.splitlines():
    if line.startswith("- "):
        if not in_list:
            body.append("<ul>")
            in_list = True
        body.append(f"  <li>{html.escape(line[2:])}</li>")
        continue
    if in_list:
        body.append("</ul>")
        in_list = False
    if line.startswith("## "):
        body.append(f"<h2>{html.escape(line[3:])}</h2>")
    elif line.startswith("# "):
        body.append(f"<h1>{html.escape(line[2:])}</h1>")
    elif line.startswith("_") and line.endswith("_"):
        body.append(f"<p><em>{html.escape(line[1:-1])}</em></p>")
    elif line.strip():
        body.append(f"<p>{html.escape(line)}</p>")
if in_list:
    body.append("</ul>")

page = (
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Release notes</title>"
    "<style>body{font-family:sans-serif;max-width:48em;margin:2em auto}</style></head>\n<body>\n"
    + "\n".join(body)
    + f"\n<footer><small>goal {html.escape(task['goal'])}, built by workbus</small></footer>\n</body></html>\n"
)
path = os.path.join(out_dir, "release-notes.html")
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write(page)
os.replace(tmp, path)

result = {"status": "ok", "output": {"path": path, "bytes": len(page.encode())}}
result_file = os.environ.get("WORKBUS_RESULT_FILE")
if result_file:
    with open(result_file, "w") as f:
        json.dump(result, f)
else:
    json.dump(result["output"], sys.stdout)
print(f"wrote {path}", file=sys.stderr)
