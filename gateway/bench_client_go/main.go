// Command bench-client: one load-generating process of `mesh bench gateway --client go`,
// K WebSocket clients. A drop-in replacement for gateway/bench_client.py: the same
// flags, the same protocol with the parent and the same result line.
//
// Protocol with the parent on stdin/stdout: prints `ready` once every client is
// subscribed (or has failed), reads `go <t0> <t1>` (epoch seconds: the measured window),
// prints one JSON line of results once every client has the end marker, or at
// t1 + grace.
//
// The clients share the machine with the gateway they measure, so they must cost as
// little CPU as possible: one goroutine per connection reading into a reusable buffer,
// the upgrade request and the frames written by hand, a JSON scanner that reads only the
// four fields measured (scan.go), latencies appended to per-client slices and
// aggregated after the window. Standard library only.
package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// defaultMaxProcs: GOMAXPROCS when the environment does not set it. One thread runs
// the goroutines: the work per frame is a read() and a few microseconds of parsing, and
// the process shares two cores with the gateway it measures. At 1,000 clients (3
// processes, 2026-11-27) GOMAXPROCS 2 measured no better (client CPU 0.35-0.41 cores
// against 0.36-0.40, p99s within the run-to-run noise).
const defaultMaxProcs = 1

type stats struct {
	total       int
	sem         chan struct{} // handshakes in flight
	settled     atomic.Int64  // subscribed or failed
	ready       chan struct{}
	finished    atomic.Int64 // clients that saw the end marker
	allFinished chan struct{}
	t0, t1      atomic.Uint64 // float64 bits; +Inf until `go`

	mu     sync.Mutex
	closed map[string]int
}

func newStats(total, inflight int) *stats {
	st := &stats{total: total, sem: make(chan struct{}, inflight), ready: make(chan struct{}),
		allFinished: make(chan struct{}), closed: map[string]int{}}
	st.t0.Store(math.Float64bits(math.Inf(1)))
	st.t1.Store(math.Float64bits(math.Inf(1)))
	if total == 0 {
		close(st.ready)
		close(st.allFinished)
	}
	return st
}

func (st *stats) acquire() { st.sem <- struct{}{} }
func (st *stats) release() { <-st.sem }

func (st *stats) settle() {
	if st.settled.Add(1) == int64(st.total) {
		close(st.ready)
	}
}

func (st *stats) finish() {
	if st.finished.Add(1) == int64(st.total) {
		close(st.allFinished)
	}
}

func (st *stats) close(reason string) {
	st.mu.Lock()
	st.closed[reason]++
	st.mu.Unlock()
}

// inWindow: receipt time now (ns) is in [t0, t1], compared as the Python client does.
func (st *stats) inWindow(now int64) bool {
	s := float64(now) / 1e9
	return math.Float64frombits(st.t0.Load()) <= s && s <= math.Float64frombits(st.t1.Load())
}

var b64 = base64.RawURLEncoding

// token: the HS256 JWT the Python client mints with PyJWT (same header, same claims in
// the same order).
func token(secret string, i int, account string, iat int64) string {
	head := b64.EncodeToString([]byte(`{"alg":"HS256","kid":"dev","typ":"JWT"}`))
	claims := fmt.Sprintf(`{"sub":"user%d","roles":["trader","risk_officer"],`+
		`"account":%s,"iat":%d,"exp":%d,"iss":"trademaster","aud":"mesh-gateway"}`,
		i, strconv.Quote(account), iat, iat+3600)
	signing := head + "." + b64.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + b64.EncodeToString(mac.Sum(nil))
}

const schedBatch = 3 // SCHED_BATCH

// setSchedBatch puts every thread of the process under SCHED_BATCH. sched_setscheduler
// acts on one thread and a new thread inherits its creator's policy, so: set every
// thread listed in /proc/self/task, and repeat until a pass finds all of them already
// set (a thread created meanwhile by a thread not yet set is caught by the next pass;
// any thread created later is cloned from a SCHED_BATCH thread).
func setSchedBatch() error {
	var param struct{ priority int32 }
	for pass := 0; pass < 100; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			pol, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
			if errno == syscall.ESRCH {
				continue // the thread ended
			} else if errno != 0 {
				return errno
			}
			if pol&0xff == schedBatch {
				continue
			}
			_, _, errno = syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid),
				schedBatch, uintptr(unsafe.Pointer(&param)))
			if errno != 0 && errno != syscall.ESRCH {
				return errno
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("threads kept appearing")
}

type result struct {
	Delivered      int64                 `json:"delivered"`
	Conflated      int64                 `json:"conflated"`
	LatUs          map[string][][2]int64 `json:"lat_us"`
	CriticalCounts []int                 `json:"critical_counts"`
	ConnectedAtEnd int                   `json:"connected_at_end"`
	Unfinished     int                   `json:"unfinished"`
	Closed         map[string]int        `json:"closed"`
	Finished       int                   `json:"finished"`
	GC             []any                 `json:"gc"`
}

// report: the result line. Each client is locked while it is read, so a reader still
// running cannot change it halfway.
func report(st *stats, clients []*client) result {
	res := result{LatUs: map[string][][2]int64{}, CriticalCounts: []int{}, GC: []any{}}
	counts := [4]map[int64]int64{}
	for p := range counts {
		counts[p] = map[int64]int64{}
	}
	for _, c := range clients {
		c.mu.Lock()
		res.Delivered += c.delivered
		res.Conflated += c.conflated
		for p, ns := range c.lat {
			m := counts[p]
			for _, v := range ns {
				us := v / 1000
				if v < 0 && v%1000 != 0 {
					us-- // floor, as Python's //
				}
				m[max(1, us)]++
			}
		}
		if c.done {
			res.CriticalCounts = append(res.CriticalCounts, len(c.crit))
		}
		if !c.lost && c.subscribed == 3 {
			res.ConnectedAtEnd++
		}
		c.mu.Unlock()
	}
	for p, m := range counts {
		rows := make([][2]int64, 0, len(m))
		for us, n := range m {
			rows = append(rows, [2]int64{us, n})
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i][0] < rows[j][0] })
		res.LatUs[prioNames[p]] = rows
	}
	res.Finished = int(st.finished.Load())
	res.Unfinished = st.total - res.Finished
	st.mu.Lock()
	res.Closed = make(map[string]int, len(st.closed))
	for k, v := range st.closed {
		res.Closed[k] = v
	}
	st.mu.Unlock()
	return res
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench-client: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(defaultMaxProcs)
	}
	wsURL := flag.String("url", "", "ws://host:port/path (required)")
	secret := flag.String("secret", "", "HS256 secret (required)")
	first := flag.Int("first", -1, "index of the first client (required)")
	count := flag.Int("count", -1, "clients in this process (required)")
	accounts := flag.Int("accounts", 50, "client i uses account ACC{i % accounts}")
	inflight := flag.Int("inflight", 100, "handshakes+subscribes in flight at once")
	grace := flag.Float64("grace", 30.0, "wait for the end marker")
	sched := flag.String("sched", "other", "other|batch (batch: SCHED_BATCH, every thread)")
	flag.Parse()
	if *wsURL == "" || *secret == "" || *first < 0 || *count < 0 {
		fail("--url, --secret, --first and --count are required")
	}
	if *sched != "other" && *sched != "batch" {
		fail("--sched: other or batch, not %q", *sched)
	}
	if *inflight < 1 || *accounts < 1 {
		fail("--inflight and --accounts must be >= 1")
	}
	u, err := url.Parse(*wsURL)
	if err != nil {
		fail("--url: %v", err)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "80"
	}
	path := u.RequestURI()
	if u.Path == "" {
		path = "/"
	}
	if *sched == "batch" {
		// SCHED_BATCH turns off wake-up preemption: a client woken by one frame does not
		// preempt the gateway in the middle of its send pass; it still gets its fair
		// share of CPU, and receipt time is still taken when it reads.
		if err := setSchedBatch(); err != nil {
			fail("--sched batch: %v", err)
		}
	}
	// BENCH_CLIENT_PROFILE=<prefix>: a CPU profile of this process into <prefix>.<pid>
	// (go tool pprof), written before the result line.
	var prof *os.File
	if p := os.Getenv("BENCH_CLIENT_PROFILE"); p != "" {
		if prof, err = os.Create(fmt.Sprintf("%s.%d", p, os.Getpid())); err != nil {
			fail("BENCH_CLIENT_PROFILE: %v", err)
		}
		if err := pprof.StartCPUProfile(prof); err != nil {
			fail("BENCH_CLIENT_PROFILE: %v", err)
		}
	}

	st := newStats(*count, *inflight)
	addr := host + ":" + port
	if strings.Contains(host, ":") {
		addr = "[" + host + "]:" + port
	}
	hostHeader := addr
	now := time.Now().Unix()
	clients := make([]*client, 0, *count)
	for i := *first; i < *first+*count; i++ {
		account := fmt.Sprintf("ACC%d", i%*accounts)
		c := &client{st: st, index: i, account: account, closeCode: -1, gated: true,
			token: token(*secret, i, account, now)}
		clients = append(clients, c)
		st.acquire() // released when the client settles
		go c.run(addr, hostHeader, path)
	}
	<-st.ready
	fmt.Println("ready")

	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "go" {
		fail("expected `go <t0> <t1>` on stdin, got %q (%v)", line, err)
	}
	t0, err0 := strconv.ParseFloat(fields[1], 64)
	t1, err1 := strconv.ParseFloat(fields[2], 64)
	if err0 != nil || err1 != nil {
		fail("bad window %q", line)
	}
	st.t0.Store(math.Float64bits(t0))
	st.t1.Store(math.Float64bits(t1))
	wait := time.Duration((max(0, t1-float64(time.Now().UnixNano())/1e9) + *grace) * 1e9)
	select {
	case <-st.allFinished:
	case <-time.After(wait):
	}
	res := report(st, clients)
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	out, _ := json.Marshal(res)
	os.Stdout.Write(append(out, '\n'))
	// (exits: the parent kills this process once it has read the line anyway)
}
