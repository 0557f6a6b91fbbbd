#!/bin/sh
# Builds the Java SDK with plain javac/jar (no Maven repository is needed) and runs its JUnit 5
# tests with the console launcher from Debian's junit5 package.
#   ./build.sh          compile and package build/aforo-sdk-<version>.jar
#   ./build.sh test     also run the tests (against the Aforo in AFORO_TEST_*)
#   ./build.sh bench    also run the overhead benchmark (bench/Overhead.java)
set -eu
cd "$(dirname "$0")"
JUNIT="${JUNIT_STANDALONE:-/usr/share/java/junit-platform-console-standalone.jar}"
VERSION=$(sed -n 's/.*String VERSION = "\(.*\)";/\1/p' src/main/java/io/aforo/sdk/Aforo.java)
rm -rf build
mkdir -p build/classes build/test-classes
javac --release 17 -Xlint:all -Werror -d build/classes $(find src/main/java -name '*.java')
jar --create --file "build/aforo-sdk-$VERSION.jar" -C build/classes .
echo "built build/aforo-sdk-$VERSION.jar"
case "${1:-}" in
  test)
    [ -f "$JUNIT" ] || { echo "!!! $JUNIT missing: apt-get install junit5 !!!" >&2; exit 2; }
    javac --release 17 -d build/test-classes -cp "build/classes:$JUNIT" $(find src/test/java -name '*.java')
    java -jar "$JUNIT" --disable-banner --fail-if-no-tests --details=tree \
      -cp "build/classes:build/test-classes" --select-package io.aforo.sdk
    ;;
  bench)
    javac --release 17 -d build/bench -cp build/classes bench/Overhead.java
    java -cp "build/classes:build/bench" Overhead
    ;;
esac
