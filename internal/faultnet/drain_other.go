//go:build !linux

package faultnet

import "net"

// unsent returns 0: only Linux tells how much of the send queue is left.
func unsent(c *net.TCPConn) int { return 0 }
