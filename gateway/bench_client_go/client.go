package main

// One WebSocket client: a goroutine that dials, writes the upgrade request by hand,
// subscribes, then reads into a reusable buffer (readLoop: raw read()s inside one
// RawConn.Read) and cuts the server's frames (never masked) out of it. One clock reading
// per read() chunk: the frames in it arrived together. Writes (subscribes, pongs) are
// rare and made by the same goroutine, after the chunk, outside mu.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	connectTimeout = 120 * time.Second
	readBufSize    = 8 << 10 // grows for a frame that does not fit
)

// The operations, byte for byte as the Python client's json.dumps writes them.
var (
	subPrices = []byte(`{"op": "subscribe", "id": "p", "channel": "prices"}`)
	subRisk   = []byte(`{"op": "subscribe", "id": "r", "domain": "risk"}`)
	pong      = []byte(`{"op":"pong"}`)
)

func subOrders(account string) []byte {
	return []byte(`{"op": "subscribe", "id": "o", "channel": "orders", "account": ` +
		strconv.Quote(account) + `}`)
}

type client struct {
	st      *stats
	index   int
	account string
	token   string
	gated   bool // holds a handshake slot (only this client's goroutine touches it)

	// Guarded by mu: the reader takes it once per chunk, the final report once.
	mu         sync.Mutex
	upgraded   bool
	subscribed int
	crit       map[string]struct{}
	closeCode  int // -1: no close frame
	lost       bool
	done       bool // saw the end marker
	delivered  int64
	conflated  int64
	lat        [4][]int64 // ns, per priority

	conn    net.Conn
	closing bool   // this side closes after the current chunk (error frame, bad handshake)
	out     []byte // frames to write once the chunk is handled (not under mu)
	frag    []byte
	f       frameInfo
}

// maskedFrame: a client frame (clients must mask).
func maskedFrame(opcode byte, data []byte) []byte {
	n := len(data)
	out := make([]byte, 0, 14+n)
	out = append(out, 0x80|opcode)
	switch {
	case n < 126:
		out = append(out, 0x80|byte(n))
	case n < 65536:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	out = append(out, key[:]...)
	for i, c := range data {
		out = append(out, c^key[i&3])
	}
	return out
}

// send queues a frame; flush writes it. The write is made outside mu: a write that
// waits for room in the socket's send buffer must not hold up the final report.
func (c *client) send(opcode byte, data []byte) {
	c.out = append(c.out, maskedFrame(opcode, data)...)
}

func (c *client) flush() {
	if len(c.out) > 0 {
		// Errors surface on the next read, as for the Python client's transport.write.
		_, _ = c.conn.Write(c.out)
		c.out = c.out[:0]
	}
}

func (c *client) ungate() {
	if c.gated {
		c.gated = false
		c.st.release()
		c.st.settle()
	}
}

// connectErrorName: the Python client's names for a failed connect (type(e).__name__).
func connectErrorName(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "TimeoutError"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			return "ConnectionRefusedError"
		case syscall.ECONNRESET:
			return "ConnectionResetError"
		case syscall.ECONNABORTED:
			return "ConnectionAbortedError"
		case syscall.ETIMEDOUT:
			return "TimeoutError"
		}
	}
	return "OSError"
}

func (c *client) run(addr, host, path string) {
	conn, err := net.DialTimeout("tcp", addr, connectTimeout)
	if err != nil {
		c.st.close(connectErrorName(err))
		c.ungate()
		return
	}
	c.conn = conn
	var key [16]byte
	_, _ = rand.Read(key[:])
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"+
		"Authorization: Bearer %s\r\n\r\n", path, host,
		base64.StdEncoding.EncodeToString(key[:]), c.token)
	_, err = conn.Write([]byte(req))

	if err == nil {
		c.readLoop(conn)
	}
	conn.Close()
	c.mu.Lock()
	if c.closeCode >= 0 {
		c.st.close(fmt.Sprintf("close %d", c.closeCode))
	} else if c.upgraded {
		c.st.close("ConnectionLost")
	} else {
		c.st.close("HandshakeFailed")
	}
	c.lost = true
	c.mu.Unlock()
	c.ungate()
}

// readLoop reads until the connection ends or this side closes it.
//
// The reads are raw read()s made inside one RawConn.Read callback (no per-read locking
// of the fd, no scheduler hand-off per syscall). The callback waits for readiness
// (returns false) only after a read() that failed with EAGAIN, never after a short one.
// The runtime's poller is edge-triggered and its readiness is one flag, which a wait
// consumes: data, end of stream (FIN) and an error (RST) arriving together make one
// edge. A short read() does not drain the socket: it stops at a FIN (the read()
// after it returns 0) and returns the data before a pending error (the read() after
// it returns ECONNRESET), and neither gets another edge. Only EAGAIN proves that
// whatever arrives next makes a new edge (and a new edge arriving while the chunk is
// handled is kept for the next wait). So each readiness edge costs one read() more,
// the one that finds nothing: as net.Conn.Read, which is correct.
func (c *client) readLoop(conn net.Conn) {
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		panic("not a TCP connection")
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, readBufSize)
	r, w := 0, 0
	_ = rc.Read(func(fd uintptr) bool {
		for {
			if w == len(buf) {
				if r > 0 { // move the partial frame to the front
					w = copy(buf, buf[r:w])
					r = 0
				} else { // one frame larger than the buffer
					nb := make([]byte, 2*len(buf))
					copy(nb, buf[:w])
					buf = nb
				}
			}
			n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd,
				uintptr(unsafe.Pointer(&buf[w])), uintptr(len(buf)-w))
			switch {
			case errno == syscall.EAGAIN:
				return false // drained: wait for the next edge
			case errno == syscall.EINTR:
				continue
			case errno != 0 || n == 0: // error or end of stream
				return true
			}
			now := time.Now().UnixNano() // one clock reading per chunk
			w += int(n)
			c.mu.Lock()
			r = c.chunk(buf, r, w, now)
			c.mu.Unlock()
			c.flush()
			if r == w {
				r, w = 0, 0
			}
			if c.closing {
				return true
			}
		}
	})
}

var headEnd = []byte("\r\n\r\n")

// chunk handles buf[r:w] after a read at time now; returns the new r (the start of an
// incomplete frame, or w).
func (c *client) chunk(buf []byte, r, w int, now int64) int {
	if !c.upgraded {
		end := bytes.Index(buf[r:w], headEnd)
		if end < 0 {
			return r
		}
		if !bytes.HasPrefix(buf[r:w], []byte("HTTP/1.1 101")) {
			c.closing = true
			return w
		}
		r += end + 4
		c.upgraded = true
		c.send(0x1, subPrices)
		c.send(0x1, subOrders(c.account))
		c.send(0x1, subRisk)
	}
	inWindow := c.st.inWindow(now)
	for w-r >= 2 {
		b0, ln := buf[r], int(buf[r+1]&0x7F)
		hl := 2
		if ln == 126 {
			if w-r < 4 {
				break
			}
			ln, hl = int(binary.BigEndian.Uint16(buf[r+2:])), 4
		} else if ln == 127 {
			if w-r < 10 {
				break
			}
			ln, hl = int(binary.BigEndian.Uint64(buf[r+2:])), 10
		}
		if w-r < hl+ln {
			break
		}
		payload := buf[r+hl : r+hl+ln]
		r += hl + ln
		opcode := b0 & 0x0F
		if b0&0x80 == 0 { // fragment: keep until the final one
			c.frag = append(c.frag, payload...)
			continue
		}
		if opcode == 0 {
			c.frag = append(c.frag, payload...)
			payload = c.frag
		}
		switch opcode {
		case 0, 1:
			if err := c.frame(payload, now, inWindow); err != nil {
				fmt.Fprintf(os.Stderr, "bench-client: client %d: %v: %.200q\n", c.index, err,
					payload)
				c.closing = true // as the Python client's transport on a decode error
			}
		case 8:
			if len(payload) >= 2 {
				c.closeCode = int(binary.BigEndian.Uint16(payload))
			} else {
				c.closeCode = 1005
			}
		case 9:
			c.send(0xA, payload)
		}
		if opcode == 0 {
			c.frag = c.frag[:0]
		}
		if c.closing {
			return w
		}
	}
	return r
}

func (c *client) frame(raw []byte, now int64, inWindow bool) error {
	f := &c.f
	err := parseFrame(raw, f, func(e *eventInfo, conflated bool) error {
		c.event(e, conflated, now, inWindow)
		return nil
	})
	if err != nil {
		return err
	}
	switch f.kind {
	case kindPing:
		c.send(0x1, pong)
	case kindStatus:
		if f.subscribed {
			c.subscribed++
			if c.subscribed == 3 {
				c.ungate()
			}
		}
	case kindError:
		c.st.close("error " + codeString(f))
		c.closing = true
	}
	return nil
}

func (c *client) event(e *eventInfo, conflated bool, now int64, inWindow bool) {
	if e.prio == prioCritical {
		if e.end {
			c.done = true
			c.st.finish()
			return
		}
		if c.crit == nil {
			c.crit = make(map[string]struct{})
		}
		if e.idEsc {
			u, _ := unescape(e.id)
			c.crit[string(u)] = struct{}{}
		} else if _, seen := c.crit[string(e.id)]; !seen {
			c.crit[string(e.id)] = struct{}{}
		}
	}
	if !inWindow {
		return
	}
	c.delivered++
	if conflated {
		c.conflated++
	}
	if e.prio >= 0 {
		c.lat[e.prio] = append(c.lat[e.prio], now-e.ts)
	}
}
