#!/usr/bin/env bash
# CI: fail when a tracked text file says how the project was made or names a path of a
# development machine. Checked, case-insensitively, in every tracked file except binary files
# and this script:
#   * the word for a working period (assembled below, so that `git grep` finds it nowhere,
#     this file included), alone or as part of a word, and the word "lent" (of machines);
#   * absolute paths of a development machine: /work/, /root/, /Users/, /tmp/, /home/<user>/
#     (only where the path starts a token, so "runs/tmp/" or a URL's path do not count).
# Prints the offending lines and exits 1 when there are any, 0 when there are none.
set -euo pipefail
cd "$(dirname "$0")/.."

start='(^|[^A-Za-z0-9_.~-])'
period="ses""sion"
pattern="${period}|(^|[^A-Za-z])lent([^A-Za-z]|$)|${start}/(work|root|Users|tmp)/|${start}/home/[A-Za-z0-9._-]+/"

status=0
git grep -n -I -i -E "$pattern" -- . ':(exclude).ci/check_words.sh' || status=$?
case "$status" in
    0)
        echo "check_words: the lines above name the process or a development machine's path;" \
             "rewrite them in neutral, present-tense words and relative paths." >&2
        exit 1
        ;;
    1)
        exit 0
        ;;
    *)
        echo "check_words: git grep failed (status $status)" >&2
        exit 2
        ;;
esac
