#!/bin/sh
# A spawn-mode workbus worker in POSIX shell (docs/PROTOCOL.md, "Spawn mode").
#
# fleet.toml:
#   [[worker]]
#   name = "counter"
#   capabilities = ["count"]
#   command = ["/usr/share/workbus/examples/worker.sh", "{{ prompt }}"]
#
# The rendered prompt arrives as $1 (argv, never through a shell); the whole
# task record is on stdin and in $WORKBUS_TASK_FILE. What it prints is the
# task's output; here, JSON counting the prompt's lines and words. A task
# without a prompt is refused through $WORKBUS_RESULT_FILE, the other way a
# spawned program may answer.
set -eu

prompt=${1-}
if [ -z "$prompt" ]; then
    printf '{"status": "error", "error": "task %s has no prompt to count"}\n' "$WORKBUS_TASK" >"$WORKBUS_RESULT_FILE"
    exit 0
fi
lines=$(printf '%s\n' "$prompt" | wc -l)
words=$(printf '%s\n' "$prompt" | wc -w)
echo "counting for $WORKBUS_GOAL.$WORKBUS_TASK attempt $WORKBUS_ATTEMPT" >&2
printf '{"lines": %d, "words": %d, "task": "%s", "attempt": %d}\n' "$lines" "$words" "$WORKBUS_TASK" "$WORKBUS_ATTEMPT"
