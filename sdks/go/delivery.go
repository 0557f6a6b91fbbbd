package aforo

// The queue (in memory, or a spool on disk), batching, what an answer from Aforo means and the
// backoff between attempts. Answers: 2xx delivered; 408/425/429/5xx and network errors retried
// with exponential backoff and full jitter, waiting at least Retry-After; 400/413 for a batch of
// several events split it in halves (one bad event cannot sink its neighbours); any other 4xx,
// or 400/413 for one event, is a rejection: reported to OnError, kept in the spool's
// rejected-*.ndjson when there is a spool, never retried.

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxBatchEvents is Aforo's limit of events per request.
const MaxBatchEvents = 1000

const maxRequestBytes = 1 << 20

func retryable(status int) bool {
	switch status {
	case 408, 425, 429, 500, 502, 503, 504:
		return true
	}
	return false
}

func splittable(status int) bool { return status == 400 || status == 413 }

// DeliveryError reports events that will not reach Aforo from this process. Reason is
// "rejected" (Aforo refused them; resending cannot help), "dropped" (retries exhausted or the
// client closed without a spool) or "overflow" (the queue was full).
type DeliveryError struct {
	Reason string
	Lines  [][]byte // the encoded events
	Detail string
	Status int // the HTTP status of a rejection, else 0
}

func (e *DeliveryError) Error() string {
	return fmt.Sprintf("aforo: %d events %s: %s", len(e.Lines), e.Reason, e.Detail)
}

// ErrSpoolLocked: another process (or client) uses the spool directory.
var ErrSpoolLocked = errors.New("aforo: spool directory is used by another process; give each process its own")

func body(lines [][]byte) []byte {
	return append(append([]byte{'['}, bytes.Join(lines, []byte{','})...), ']')
}

// retryAfter parses Retry-After: delta-seconds or an HTTP date; -1 when absent or unreadable.
func retryAfter(value string) time.Duration {
	value = strings.TrimSpace(value)
	if value == "" {
		return -1
	}
	if s, err := strconv.ParseFloat(value, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(value); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
		return 0
	}
	return -1
}

var jitter = struct {
	sync.Mutex
	*rand.Rand
}{Rand: rand.New(rand.NewSource(time.Now().UnixNano()))}

func random() float64 {
	jitter.Lock()
	defer jitter.Unlock()
	return jitter.Float64()
}

// backoff is full jitter: uniform in [0, min(cap, base·2^attempt)], never sooner than Retry-After.
func backoff(attempt int, base, cap time.Duration, after time.Duration, rnd func() float64) time.Duration {
	ceiling := math.Min(float64(cap), float64(base)*math.Pow(2, math.Min(float64(attempt), 32)))
	d := time.Duration(rnd() * ceiling)
	if after >= 0 && after > d {
		return after
	}
	return d
}

type outbox interface {
	put(line []byte, now time.Time) bool
	length() int
	fullBatch() bool
	firstAt() time.Time
	take() ([][]byte, string, error)
	done(token string)
	drain() [][]byte
	close()
}

func takeLines(queue [][]byte, limit int) ([][]byte, [][]byte) {
	size, n := 2, 0
	for n < len(queue) && n < limit && (n == 0 || size+len(queue[n])+1 <= maxRequestBytes) {
		size += len(queue[n]) + 1
		n++
	}
	return queue[:n:n], queue[n:]
}

type memoryOutbox struct {
	queue []([]byte)
	max   int
	batch int
	first time.Time
}

func (m *memoryOutbox) length() int        { return len(m.queue) }
func (m *memoryOutbox) fullBatch() bool    { return len(m.queue) >= m.batch }
func (m *memoryOutbox) firstAt() time.Time { return m.first }
func (m *memoryOutbox) done(string)        {}
func (m *memoryOutbox) close()             {}

func (m *memoryOutbox) put(line []byte, now time.Time) bool {
	if len(m.queue) >= m.max {
		return false
	}
	if len(m.queue) == 0 {
		m.first = now
	}
	m.queue = append(m.queue, line)
	return true
}

func (m *memoryOutbox) take() ([][]byte, string, error) {
	var lines [][]byte
	lines, m.queue = takeLines(m.queue, m.batch)
	return lines, "", nil
}

func (m *memoryOutbox) drain() [][]byte {
	lines := m.queue
	m.queue = nil
	return lines
}

// spoolOutbox is the queue on disk: each event is appended to the head segment before Meter
// returns, so it survives the process exiting or being killed (not a machine crash: there is no
// fsync per event). A segment holds one batch and is deleted once Aforo acknowledged it;
// segments left by an earlier run are sent first (a duplicate at worst, never a second charge).
type spoolOutbox struct {
	dir       string
	lock      *os.File
	max       int64
	batch     int
	sealed    []string
	bytes     int64
	seq       int64
	head      *os.File
	headPath  string
	headCount int
	headBytes int
	first     time.Time
}

func openSpool(dir string, maxBytes int64, batch int) (*spoolOutbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := lockFile(filepath.Join(dir, ".lock"))
	if err != nil {
		return nil, err
	}
	s := &spoolOutbox{dir: dir, lock: lock, max: maxBytes, batch: batch}
	names, _ := filepath.Glob(filepath.Join(dir, "seg-*.ndjson"))
	sort.Strings(names)
	for _, name := range names {
		if info, err := os.Stat(name); err == nil {
			s.sealed = append(s.sealed, name)
			s.bytes += info.Size()
		}
		base := filepath.Base(name)
		if n, err := strconv.ParseInt(base[4:len(base)-7], 10, 64); err == nil && n > s.seq {
			s.seq = n
		}
	}
	return s, nil
}

func (s *spoolOutbox) length() int        { return s.headCount + len(s.sealed) }
func (s *spoolOutbox) fullBatch() bool    { return len(s.sealed) > 0 || s.headCount >= s.batch }
func (s *spoolOutbox) firstAt() time.Time { return s.first }
func (s *spoolOutbox) drain() [][]byte    { return nil } // everything waiting is on disk already

func (s *spoolOutbox) file(prefix string) string {
	s.seq++
	return filepath.Join(s.dir, fmt.Sprintf("%s-%020d.ndjson", prefix, s.seq))
}

func (s *spoolOutbox) put(line []byte, now time.Time) bool {
	size := len(line) + 1
	if s.bytes+int64(size) > s.max {
		return false
	}
	if s.headCount > 0 && (s.headCount >= s.batch || s.headBytes+size+2 > maxRequestBytes) {
		s.seal()
	}
	if s.head == nil {
		s.headPath = s.file("seg")
		f, err := os.OpenFile(s.headPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return false
		}
		s.head, s.first = f, now
	}
	if _, err := s.head.Write(append(line, '\n')); err != nil {
		return false
	}
	s.headCount++
	s.headBytes += size
	s.bytes += int64(size)
	return true
}

func (s *spoolOutbox) seal() {
	if s.head != nil {
		s.head.Close()
		s.sealed = append(s.sealed, s.headPath)
		s.head, s.headPath, s.headCount, s.headBytes = nil, "", 0, 0
	}
}

func (s *spoolOutbox) take() ([][]byte, string, error) {
	if len(s.sealed) == 0 {
		s.seal()
	}
	if len(s.sealed) == 0 {
		return nil, "", nil
	}
	path := s.sealed[0]
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	// A crash can leave a last line half written: only newline-terminated lines are events.
	parts := bytes.Split(raw, []byte{'\n'})
	var lines [][]byte
	for _, line := range parts[:len(parts)-1] {
		if len(line) > 0 {
			lines = append(lines, line)
		}
	}
	return lines, path, nil
}

func (s *spoolOutbox) done(token string) {
	s.sealed = s.sealed[1:]
	if info, err := os.Stat(token); err == nil {
		s.bytes -= info.Size()
	}
	os.Remove(token)
}

func (s *spoolOutbox) reject(lines [][]byte) string {
	path := s.file("rejected")
	os.WriteFile(path, append(bytes.Join(lines, []byte{'\n'}), '\n'), 0o600)
	return path
}

func (s *spoolOutbox) close() {
	if s.head != nil {
		s.head.Close()
		s.head = nil
	}
	unlockFile(s.lock)
}

type work struct {
	token     string
	parts     [][][]byte
	attempt   int
	notBefore time.Time
}

// outbound is the state the client drives under its lock: what to send next, what an answer
// means. Its methods return the errors to report, which the client hands to OnError unlocked.
type outbound struct {
	o     *Options
	rnd   func() float64
	stats Stats
	spool *spoolOutbox
	box   outbox
	work  *work
}

func newOutbound(o *Options) (*outbound, error) {
	out := &outbound{o: o, rnd: random}
	if o.SpoolDir != "" {
		spool, err := openSpool(o.SpoolDir, o.SpoolMaxBytes, o.BatchSize)
		if err != nil {
			return nil, err
		}
		out.spool, out.box = spool, spool
	} else {
		out.box = &memoryOutbox{max: o.MaxQueue, batch: o.BatchSize}
	}
	return out, nil
}

func (b *outbound) put(line []byte, now time.Time) bool {
	if !b.box.put(line, now) {
		return false
	}
	b.stats.Queued++
	return true
}

func (b *outbound) idle() bool { return b.work == nil && b.box.length() == 0 }

func (b *outbound) ready(now time.Time, force bool) bool {
	return b.box.length() > 0 && (force || b.box.fullBatch() || now.Sub(b.box.firstAt()) >= b.o.Linger)
}

// nextRequest: the events to send now, if any (force: flushing, no lingering).
func (b *outbound) nextRequest(now time.Time, force bool) [][]byte {
	if b.work == nil && b.ready(now, force) {
		if lines, token, err := b.box.take(); err == nil && len(lines) > 0 {
			b.work = &work{token: token, parts: [][][]byte{lines}}
		} else if err == nil && token != "" {
			b.box.done(token) // an empty segment
		}
	}
	if b.work != nil && !now.Before(b.work.notBefore) {
		return b.work.parts[0]
	}
	return nil
}

// waitFor: how long until nextRequest may have something; false: until an event is put.
func (b *outbound) waitFor(now time.Time) (time.Duration, bool) {
	if b.work != nil {
		return b.work.notBefore.Sub(now), true
	}
	if b.box.length() > 0 {
		return b.box.firstAt().Add(b.o.Linger).Sub(now), true
	}
	return 0, false
}

func (b *outbound) answered(status int, after time.Duration, detail string, now time.Time) []*DeliveryError {
	b.stats.Requests++
	lines := b.work.parts[0]
	switch {
	case status >= 200 && status < 300:
		b.stats.Delivered += len(lines)
		return b.partDone()
	case retryable(status):
		return b.retry(fmt.Sprintf("HTTP %d: %s", status, detail), after, now)
	case splittable(status) && len(lines) > 1:
		half := len(lines) / 2
		b.work.parts = append([][][]byte{lines[:half], lines[half:]}, b.work.parts[1:]...)
		return nil
	}
	b.stats.Rejected += len(lines)
	where := ""
	if b.spool != nil {
		where = " (kept in " + b.spool.reject(lines) + ")"
	}
	b.o.Logger.Printf("aforo: Aforo refused %d events with HTTP %d%s: %s", len(lines), status, where, detail)
	return append([]*DeliveryError{{Reason: "rejected", Lines: lines, Detail: detail + where, Status: status}},
		b.partDone()...)
}

// failed: the request got no answer (connection refused, reset, timeout).
func (b *outbound) failed(err error, now time.Time) []*DeliveryError {
	b.stats.Requests++
	return b.retry(err.Error(), -1, now)
}

func (b *outbound) partDone() []*DeliveryError {
	b.work.parts = b.work.parts[1:]
	b.work.attempt = 0
	if len(b.work.parts) == 0 {
		b.box.done(b.work.token)
		b.work = nil
	}
	return nil
}

func flatten(parts [][][]byte) [][]byte {
	var lines [][]byte
	for _, p := range parts {
		lines = append(lines, p...)
	}
	return lines
}

func (b *outbound) retry(why string, after time.Duration, now time.Time) []*DeliveryError {
	w := b.work
	if w.attempt >= b.o.MaxRetries && b.spool == nil {
		lines := flatten(w.parts)
		b.stats.Dropped += len(lines)
		b.work = nil
		b.o.Logger.Printf("aforo: dropped %d events after %d retries: %s", len(lines), b.o.MaxRetries, why)
		return []*DeliveryError{{Reason: "dropped", Lines: lines,
			Detail: fmt.Sprintf("after %d retries: %s", b.o.MaxRetries, why)}}
	}
	// With a spool nothing is given up: the batch stays on disk and is retried at the cap.
	d := backoff(w.attempt, b.o.BackoffBase, b.o.BackoffMax, after, b.rnd)
	w.attempt++
	w.notBefore = now.Add(d)
	b.stats.Retries++
	b.o.Logger.Printf("aforo: Aforo did not take %d events (%s); retrying in %v", len(w.parts[0]), why, d)
	return nil
}

// abandon, on close past the flush deadline: what is lost (nothing, with a spool).
func (b *outbound) abandon() []*DeliveryError {
	if b.spool != nil {
		b.spool.close()
		return nil
	}
	var lines [][]byte
	if b.work != nil {
		lines = flatten(b.work.parts)
	}
	lines = append(lines, b.box.drain()...)
	b.work = nil
	if len(lines) == 0 {
		return nil
	}
	b.stats.Dropped += len(lines)
	b.o.Logger.Printf("aforo: closing with %d events undelivered and no SpoolDir: they are lost", len(lines))
	return []*DeliveryError{{Reason: "dropped", Lines: lines, Detail: "the client closed before Aforo took them"}}
}

func (b *outbound) overflow(line []byte) []*DeliveryError {
	b.stats.Dropped++
	where := "queue"
	if b.spool != nil {
		where = "spool"
	}
	b.o.Logger.Printf("aforo: %s full: dropped an event (see Overflow / MaxQueue / SpoolMaxBytes)", where)
	return []*DeliveryError{{Reason: "overflow", Lines: [][]byte{line}, Detail: "the " + where + " is full"}}
}
