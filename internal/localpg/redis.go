package localpg

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Redis is a redis-server on 127.0.0.1 without persistence, for the
// fleet-wide limiter.
type Redis struct {
	bin    string
	port   int
	served // redis-server and its directory; proc is nil while killed
}

// redisStartTimeout bounds a start of redis-server.
const redisStartTimeout = 30 * time.Second

// StartRedis starts redis-server on a free port of 127.0.0.1 with nothing
// saved to disk. On error nothing is left running.
func StartRedis() (*Redis, error) {
	bin, err := redisBin()
	if err != nil {
		return nil, err
	}
	// Redis runs as this process's user, root or not.
	dir, err := newInstanceDir(account{}, "redis")
	if err != nil {
		return nil, err
	}
	r := &Redis{bin: bin, served: served{dir: dir}}
	register(r)
	if err := r.start(); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

// start starts redis-server on a free port, retrying on another one when
// the chosen port was taken meanwhile.
func (r *Redis) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for attempt := 1; ; attempt++ {
		var err error
		if r.port, err = freePort(); err != nil {
			return err
		}
		err = r.startLocked()
		if err == nil || attempt == 5 || !portTaken(r.LogFile()) {
			return err
		}
	}
}

// startLocked starts redis-server on r.port and waits for it to answer
// PING. r.mu is held.
func (r *Redis) startLocked() error {
	p, err := startProc(account{}, r.dir, r.LogFile(), r.bin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--daemonize", "no", "--logfile", "")
	if err != nil {
		return err
	}
	if err := p.waitReady(redisStartTimeout, r.LogFile(), func() bool { return ping(r.Addr()) == nil }); err != nil {
		p.stop(syscall.SIGKILL, 0)
		return err
	}
	r.proc = p
	return nil
}

// ping sends PING to the Redis at addr and checks for PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return errors.New("redis answered PING with " + strconv.Quote(line))
	}
	return nil
}

// Addr returns "127.0.0.1:PORT".
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// URL returns "redis://127.0.0.1:PORT/0".
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Pid returns redis-server's process id, or 0 while it is not running.
func (r *Redis) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.proc.exited() {
		return 0
	}
	return r.proc.pid()
}

// LogFile returns the path of the Redis log.
func (r *Redis) LogFile() string { return filepath.Join(r.dir, "redis.log") }

// Kill kills redis-server (SIGKILL), as in an outage; Restart brings it
// back, empty, on the same port.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed {
		return errors.New("localpg: redis was stopped")
	}
	if r.proc != nil {
		r.proc.stop(syscall.SIGKILL, 0)
		r.proc = nil
	}
	return nil
}

// Restart kills redis-server if it runs and starts it again, empty, on the
// same port.
func (r *Redis) Restart() error {
	if err := r.Kill(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startLocked()
}

// Stop kills redis-server and removes its directory. It is idempotent.
func (r *Redis) Stop() error { return r.stopAndRemove(r, syscall.SIGKILL, 0) }
