//go:build unix && !linux

package localpg

import (
	"errors"
	"syscall"
)

// sysProcAttr makes a child run as cred (nil: as us) in its own process
// group. Without Linux's parent-death signal, a server outlives a killed
// test binary until the next start reaps it.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// procStartTime reports whether pid is running; the start time is 0 as
// there is no portable way to learn it.
func procStartTime(pid int) (uint64, error) {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, err
	}
	return 0, nil
}

// raiseFileLimit is a no-op here.
func raiseFileLimit(pid int) {}
