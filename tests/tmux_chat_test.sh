#!/usr/bin/env bash
# flashmoe chat on a terminal, driven through tmux: two turns that reuse the cache, Ctrl-C during an
# answer, /save, /quit, a restart from the saved session, and Ctrl-C at an empty prompt to exit.
# Usage: tmux_chat_test.sh FLASHMOE_BINARY. Exit 77 (skipped) without tmux.
set -euo pipefail
cli=${1:?usage: tmux_chat_test.sh FLASHMOE_BINARY}
command -v tmux >/dev/null || { echo "tmux not found: skipped"; exit 77; }
export TERM=${TERM:-xterm}
[ "$TERM" = dumb ] && export TERM=xterm

work=$(mktemp -d)
sock="fmchat-$$"
t() { tmux -L "$sock" "$@"; }
cleanup() {
  t kill-server 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

screen() { t capture-pane -p -J -S -2000 -t chat 2>/dev/null || true; }
fail() {
  echo "FAIL: $*"
  echo "---- screen ----"
  cat "$work/last" 2>/dev/null || true
  exit 1
}
# wait_for COUNT PATTERN [SECONDS]: until PATTERN (grep -E) matches at least COUNT lines of the screen.
wait_for() {
  local count=$1 pattern=$2 limit=${3:-15} i
  for ((i = 0; i < limit * 20; i++)); do
    screen >"$work/last"
    [ "$(grep -cE -- "$pattern" "$work/last" || true)" -ge "$count" ] && return 0
    sleep 0.05
  done
  fail "no $count line(s) matching '$pattern' after ${limit}s"
}
prompts() { screen | grep -cE '^> ' || true; }
# ask TEXT: sends a line and waits until a new prompt shows.
send_line() {
  local before
  before=$(prompts)
  t send-keys -t chat -l -- "$1"
  t send-keys -t chat Enter
  wait_for $((before + 1)) '^> '
}
exited() {
  local i
  for ((i = 0; i < 100; i++)); do
    t has-session -t chat 2>/dev/null || return 0
    sleep 0.05
  done
  return 1
}

start() {  # start EXTRA_ARGS...
  t new-session -d -s chat -x 160 -y 50 "$cli chat -t 2 --ctx 4096 -n 24 $* 2>&1; echo flashmoe-exit=\$?; sleep 30"
  wait_for 1 '^> '
}

# --- first run ---
start
send_line "In the beginning"
send_line "What did God make?"
send_line "/stats"
grep -qE 'turns: 2 .*prefix reuses: 1 \| re-prefills: 0' "$work/last" || fail "/stats: the second turn did not reuse the cache"

# Ctrl-C during a long answer returns to the prompt, and the conversation goes on.
send_line "/max 100000"
before=$(prompts)
t send-keys -t chat -l -- "Tell me the whole story"
t send-keys -t chat Enter
sleep 0.7
t send-keys -t chat C-c
wait_for 1 '\[interrupted\]'
wait_for $((before + 1)) '^> '
send_line "/max 24"
send_line "/stats"
grep -qE 'turns: 3 .*re-prefills: 0' "$work/last" || fail "/stats after the interrupted answer"

send_line "/save $work/s.fmchat"
n=$(grep -oE 'saved [0-9]+ tokens' "$work/last" | tail -1 | grep -oE '[0-9]+') || fail "/save printed no token count"
[ -s "$work/s.fmchat" ] || fail "/save wrote no file"
t send-keys -t chat -l -- "/quit"
t send-keys -t chat Enter
wait_for 1 '^flashmoe-exit=0$'
t kill-session -t chat
exited || fail "tmux session did not end"

# --- restart from the session ---
start --session "$work/s.fmchat"
send_line "/stats"
grep -qE "context: $n tokens" "$work/last" || fail "/stats after --session: expected context: $n tokens"
send_line "And the sea?"
send_line "/stats"
grep -qE 'turns: 1 .*prefix reuses: 1 \| re-prefills: 0' "$work/last" || fail "the restored session was prefilled again"
# Ctrl-C at an empty prompt exits.
t send-keys -t chat C-c
wait_for 1 '^flashmoe-exit=0$'
cat "$work/last"
echo "tmux chat test: ok ($n tokens saved and restored)"
