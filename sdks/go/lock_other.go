//go:build !unix

package aforo

import "os"

// No flock here: one process per spool directory is on the user.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

func unlockFile(f *os.File) { f.Close() }
