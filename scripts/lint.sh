#!/bin/sh
# lint.sh - the style checks that keep the code from drifting: no line over
# 80 columns, no tab indentation, no trailing blanks, no unmarked TODO, and
# and the shell scripts checked when shellcheck is installed.
set -u
cd "$(dirname "$0")/.." || exit 1
rc=0
files=$(git ls-files --cached --others --exclude-standard 'core/*.[ch]' \
    'lua/*.[ch]' 'tests/*.[ch]' 'examples/*.lua' 'examples/*/*.lua' \
    'tests/e2e/*.lua' 2>/dev/null)
for f in $files; do
    awk -v f="$f" '
        length($0) > 80 { printf "%s:%d: longer than 80 columns\n", f, NR; bad = 1 }
        /\t/ { printf "%s:%d: tab\n", f, NR; bad = 1 }
        /[ \t]+$/ { printf "%s:%d: trailing blank\n", f, NR; bad = 1 }
        /(TODO|FIXME)/ { printf "%s:%d: use XXX(reason): for known gaps\n", f, NR; bad = 1 }
        END { exit bad }' "$f" || rc=1
done
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck scripts/*.sh .ci/run || rc=1
fi
[ $rc -eq 0 ] && echo "lint: ok"
exit $rc
