package faultnet

import (
	"net"
	"syscall"
	"unsafe"
)

// unsent returns the bytes c's kernel send queue still holds (SIOCOUTQ:
// not yet acknowledged by the peer), or 0 when that cannot be told.
func unsent(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n int32
	rc.Control(func(fd uintptr) {
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n)))
		if errno != 0 {
			n = 0
		}
	})
	return int(n)
}
