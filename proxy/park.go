package proxy

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"
)

// Parking: a client idle for parkAfter, with no server and nothing pending,
// gives up its goroutine (and stack). Its socket waits in the parker's epoll
// set instead, one-shot; when it turns readable (input or hang-up) a fresh
// goroutine serves it again. The janitor asks a client to park by expiring
// its read deadline. Only plain-TCP client sessions park; an active client
// is never touched, so the hot path is unchanged.

// parkAfter is how long a client is idle before it parks.
const parkAfter = time.Second

// parker owns the epoll set of parked clients and the goroutine that waits
// on it; both start with the first park.
type parker struct {
	p     *Proxy
	once  sync.Once
	epfd  int
	pipe  [2]int        // a write to pipe[1] stops run
	done  chan struct{} // closed when run returns; nil if never started
	ready bool          // epfd and pipe are open
}

func (pk *parker) start() bool {
	pk.once.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		if err := syscall.Pipe2(pk.pipe[:], syscall.O_CLOEXEC); err != nil {
			syscall.Close(epfd)
			return
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(pk.pipe[0])}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pk.pipe[0], &ev); err != nil {
			syscall.Close(epfd)
			syscall.Close(pk.pipe[0])
			syscall.Close(pk.pipe[1])
			return
		}
		pk.epfd, pk.ready, pk.done = epfd, true, make(chan struct{})
		go pk.run()
	})
	return pk.ready
}

// run resumes parked clients as their sockets turn readable, until stop.
func (pk *parker) run() {
	defer close(pk.done)
	var events [64]syscall.EpollEvent
	for {
		n, err := syscall.EpollWait(pk.epfd, events[:], -1)
		if err != nil && err != syscall.EINTR {
			pk.p.log.Error("parked clients: epoll_wait failed", "err", err)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == pk.pipe[0] {
				syscall.Close(pk.epfd)
				syscall.Close(pk.pipe[0])
				syscall.Close(pk.pipe[1])
				return
			}
			if c := pk.p.client(uint32(ev.Pad)); c != nil {
				c.lastActive.Store(time.Now().UnixNano())
				c.resume()
			}
		}
	}
}

// stop ends run (after Proxy.Close resumed every parked client).
func (pk *parker) stop() {
	pk.once.Do(func() {}) // no start after this
	if pk.done == nil {
		return
	}
	syscall.Write(pk.pipe[1], []byte{0})
	<-pk.done
}

// park hands c's socket to the parker, on c's goroutine, which must return
// when park reports true.
func (pk *parker) park(c *client) bool {
	if !pk.start() {
		return false
	}
	fd := -1
	c.raw.Control(func(s uintptr) { fd = int(s) })
	if fd < 0 {
		return false
	}
	op := syscall.EPOLL_CTL_ADD
	if c.inEpoll {
		op = syscall.EPOLL_CTL_MOD // still there, disarmed by its last event
	}
	c.inEpoll = true
	c.parked.Store(true) // from here c may be resumed at any time
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(fd), Pad: int32(c.id)}
	if err := syscall.EpollCtl(pk.epfd, op, fd, &ev); err != nil && c.parked.CompareAndSwap(true, false) {
		c.inEpoll = false // not registered; the next park adds it
		return false
	}
	pk.p.parks.Add(1)
	return true
}

// askPark asks c's goroutine to park (janitor): its blocked read returns.
func (c *client) askPark() {
	if c.raw == nil || c.parked.Load() || c.parkReq.Swap(true) {
		return
	}
	c.conn.SetReadDeadline(time.Unix(1, 0))
}

// parkRequested reports whether err ended a read because the janitor asked
// c to park; the read deadline is then cleared.
func (c *client) parkRequested(err error) bool {
	if !c.parkReq.Swap(false) || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.conn.SetReadDeadline(time.Time{})
	return true
}

// canPark reports whether c, on its goroutine, holds nothing a goroutine
// must look after.
func (c *client) canPark() bool {
	return c.raw != nil && c.w == 0 && c.skip == 0 && !c.discarding &&
		c.server.Load() == nil && c.state.Load() == stateIdle &&
		c.closing.Load() == nil && c.p.ctx.Err() == nil
}

// resume gives a parked client a goroutine again.
func (c *client) resume() {
	if c.parked.CompareAndSwap(true, false) {
		go c.serve()
	}
}
