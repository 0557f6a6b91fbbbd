#!/bin/sh
# What the SDK suites need, installed when missing (`make test` runs this): Go (Debian's
# golang-go), a JDK and JUnit 5 (Debian's junit5), Node.js and npm, and the Node SDK's dev
# dependencies (npm ci). Without root or apt, says loudly what is missing: those suites skip.
set -e
cd "$(dirname "$0")"
need=""
command -v go >/dev/null 2>&1 || need="$need golang-go"
command -v javac >/dev/null 2>&1 || need="$need default-jdk-headless"
[ -f /usr/share/java/junit-platform-console-standalone.jar ] || need="$need junit5"
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing for the SDK suites:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  else
    echo "!!! missing:$need (Debian: apt-get install$need); those SDK suites will be SKIPPED !!!" >&2
  fi
fi
if command -v npm >/dev/null 2>&1; then
  cd node
  # npm ci only when the lock file changed since the last install
  [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error
fi
