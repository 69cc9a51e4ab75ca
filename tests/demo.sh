#!/usr/bin/env bash
# demo.sh: cryo's main job on a real program, end to end.
#
# Starts bench/workloads/progress.py (a python3 program that builds about
# 300 MiB of objects in 40 steps, logging progress to a file), checkpoints it
# at step 24 (of 40) into a fresh store, kills it with SIGKILL, restores it lazily with
# `cryo restore latest`, lets it finish, and compares its progress file with
# that of an uninterrupted run. Prints the timings and the verdict; exits 0
# only when the two files are byte-identical.
#
# Usage: tests/demo.sh [CRYO_BINARY]   (default bin/cryo; needs root)
set -euo pipefail

cd "$(dirname "$0")/.."
cryo=$(realpath "${1:-bin/cryo}")
script=$(realpath bench/workloads/progress.py)
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
export PYTHONHASHSEED=0

# Descriptors this shell inherited without close-on-exec (an IDE's, a CI runner's)
# would pass to the program; being outside it, its checkpoint would refuse them.
# Bash keeps the script itself on fd 255.
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

if [ "$(id -u)" != 0 ]; then
	echo "demo: cryo needs root (ptrace of any process, clone3 set_tid, PR_SET_MM); run as root" >&2
	exit 1
fi
[ -x "$cryo" ] || { echo "demo: no cryo binary at $cryo (run make build)" >&2; exit 1; }

work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
store=$work/store
mkdir -m 700 "$store"
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f s", b - a }'; }

echo "== reference: an uninterrupted run"
t=$(now)
"$python" "$script" "$work/reference.txt" 40 0.01 >"$work/reference.stdout"
echo "   finished in $(since "$t"): $(tail -n 1 "$work/reference.txt")"

echo "== run: start progress.py, checkpoint it at step 24"
"$python" "$script" "$work/progress.txt" 40 0.3 >"$work/progress.stdout" &
pid=$!
deadline=$((SECONDS + 60))
until grep -q '^step 24 ' "$work/progress.txt" 2>/dev/null; do
	if [ $SECONDS -gt $deadline ]; then echo "demo: progress.py never reached step 24" >&2; exit 1; fi
	sleep 0.02
done
echo "   pid $pid, VmRSS $(awk '/^VmRSS/ { print $2 / 1024 " MiB" }' /proc/$pid/status)"
t=$(now)
snap=$("$cryo" --store "$store" checkpoint "$pid")
echo "   checkpoint $snap took $(since "$t") (wall)"

echo "== kill -9 the original"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pid=
echo "   killed at: $(tail -n 1 "$work/progress.txt")"
if grep -q '^final' "$work/progress.txt"; then
	echo "demo: the program finished before it was killed; nothing left to show" >&2
	exit 1
fi

echo "== cryo restore latest (lazy), in the foreground until the program exits"
t=$(now)
status=0
"$cryo" --store "$store" --log-level info restore latest || status=$?
if [ $status != 0 ]; then
	echo "RESULT: FAILED: cryo restore exited $status after $(since "$t")"
	exit 1
fi
echo "   restored program exited 0 after $(since "$t")"

echo "== compare"
echo "   reference: $(tail -n 1 "$work/reference.txt")"
echo "   restored:  $(tail -n 1 "$work/progress.txt")"
if cmp -s "$work/reference.txt" "$work/progress.txt"; then
	echo "RESULT: IDENTICAL: the restored run's output is byte-identical to the uninterrupted run's"
else
	echo "RESULT: DIFFERENT:"
	diff "$work/reference.txt" "$work/progress.txt" | head -20
	exit 1
fi
